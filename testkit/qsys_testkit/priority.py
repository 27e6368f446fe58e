"""CPU priority of the tests off a `make test` run's critical path.

On 2 cores the background tool builds, the real-node tests and the `timing` tests set
how long `make test` takes; unit, integration and kwok-only tests have minutes of slack
beside them. Under `make test` (QSYS_BESIDE_NICE, hack/test.sh) a worker runs those at a
higher niceness, so that they take the CPU the others leave rather than share it evenly
(docs/testing.md, "How `make test` runs"). Linux keeps a niceness per thread and a child
inherits its creator's: a change applies to every thread of the worker and of the
processes it started.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from pathlib import Path

NICE_ENV = "QSYS_BESIDE_NICE"

_base: int | None = None
_current: int | None = None


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        tree[int(fields[1])].append(int(stat.parent.name))
    return tree


def renice_tree(value: int, root: int | None = None) -> list[int]:
    """Sets the niceness of every thread of root (this process by default) and of its
    descendants to value; returns the process ids it reached."""
    tree = _children()
    reached: list[int] = []
    pending = [os.getpid() if root is None else root]
    while pending:
        pid = pending.pop()
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        reached.append(pid)
        for tid in threads:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, int(tid), value)
        pending.extend(tree.get(pid, ()))
    return reached


def prioritize(critical: bool) -> None:
    """Under `make test`: this worker's tree at its starting niceness for a test on the
    critical path, QSYS_BESIDE_NICE above it for the others; a no-op otherwise."""
    global _base, _current
    raw = os.environ.get(NICE_ENV)
    if not raw:
        return
    if _base is None:
        _base = os.getpriority(os.PRIO_PROCESS, 0)
    value = _base if critical else min(19, _base + int(raw))
    if value != _current:
        renice_tree(value)
        _current = value
