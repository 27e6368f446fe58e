"""When each test of a `make test` run waited, started and ended, by xdist group.

A run's critical path is one of its groups (the real-node e2e tests, warm) or the tool
builds that groups wait for (cold); pytest's durations say how long tests took, not when.
Under `make test` (QSYS_TEST_TIMELINE, hack/test.sh) every test appends one JSON line;
`python -m qsys_testkit.timeline FILE SINCE` prints, per group, its tests, when its
first test started and its last ended (seconds after SINCE, an epoch time), and the
seconds it spent waiting for tool groups and running.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

TIMELINE_ENV = "QSYS_TEST_TIMELINE"
RUN_ENV = "QSYS_TEST_RUN"


def record(group: str, nodeid: str, entered: float, started: float, ended: float) -> None:
    """Appends the test's line (one write: lines of several workers do not interleave)."""
    path = os.environ.get(TIMELINE_ENV)
    if not path:
        return
    run = os.environ.get(RUN_ENV, "main")
    times = [round(entered, 2), round(started, 2), round(ended, 2)]
    line = json.dumps([run, group, nodeid, *times]) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@dataclass
class Group:
    tests: int = 0
    first: float = float("inf")
    last: float = 0.0
    waited: float = 0.0
    ran: float = 0.0


def summary(lines: list[str], since: float) -> list[str]:
    groups: dict[str, Group] = {}
    for line in lines:
        run, group, _, entered, started, ended = json.loads(line)
        g = groups.setdefault(f"{run}/{group}", Group())
        g.tests += 1
        g.first = min(g.first, started - since)
        g.last = max(g.last, ended - since)
        g.waited += started - entered
        g.ran += ended - started
    return [
        f"{name}: {g.tests} tests, from {g.first:.0f} s to {g.last:.0f} s; "
        f"waited for tools {g.waited:.0f} s, ran {g.ran:.0f} s"
        for name, g in sorted(groups.items(), key=lambda item: item[1].last)
    ]


def main(argv: list[str]) -> int:
    path, since = Path(argv[0]), float(argv[1])
    lines = path.read_text().splitlines() if path.exists() else []
    for line in summary(lines, since):
        print(f"timeline: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
