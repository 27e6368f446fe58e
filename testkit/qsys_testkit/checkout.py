"""Helpers for this repository's own tests, benchmarks and demo: the pinned tools that
hack/tools builds into $QSYS_TOOLS_CACHE and the images `make images` builds. They need a
checkout of the repository (an editable install); users' CI does not."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# Set by `make test` (hack/test.sh), which builds the groups QSYS_TOOL_GROUPS names in
# the background: the status directory of that build (its pid, log, GROUP.failed).
STATUS_ENV = "QSYS_TOOLS_STATUS"
GROUPS_ENV = "QSYS_TOOL_GROUPS"
# While a test runs under `make test`: the groups it waited for (tests/conftest.py); the
# subprocesses it starts inherit it. pinned_tool refuses the other groups of the build.
AWAITED_ENV = "QSYS_TOOLS_AWAITED"


def hack_script(name: str) -> ModuleType:
    """hack/NAME.py imported as a module (hack/ is not a package), e.g. to run the
    release's own steps in a test."""
    spec = importlib.util.spec_from_file_location(f"hack_{name}", REPO / "hack" / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"hack/{name}.py cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tool_dir(group: str) -> Path:
    """Bin directory of the pinned tool group hack/tools/GROUP (built or not)."""
    out = subprocess.run(  # noqa: S603 - fixed argv of this repository's script
        ["bash", str(REPO / "hack" / "tools" / "build.sh"), "--dir", group],  # noqa: S607
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def background_build() -> tuple[Path, set[str]] | None:
    """The status directory and groups of `make test`'s background build, if one runs."""
    status = os.environ.get(STATUS_ENV, "")
    if not status:
        return None
    return Path(status), set(os.environ.get(GROUPS_ENV, "").split())


def _builder_alive(status: Path) -> bool:
    try:
        pid = int((status / "pid").read_text())
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for_tools(groups: Iterable[str], timeout: float = 3 * 3600.0) -> str | None:
    """Wait until `make test`'s background build has built each of groups (those it
    builds; others are left to pinned_tool). None when they are built, else why not."""
    build = background_build()
    if build is None:
        return None
    status, building = build
    deadline = time.monotonic() + timeout
    for group in sorted(set(groups) & building):
        complete = tool_dir(group) / ".complete"
        while not complete.is_file():
            failed = status / f"{group}.failed"
            if failed.is_file() or not _builder_alive(status):
                why = failed.read_text().strip() if failed.is_file() else "the build ended"
                log = (status / "log").read_text(errors="replace").splitlines()[-40:]
                return f"hack/tools/{group} is not built: {why}; its log ({status / 'log'}):\n" + (
                    "\n".join(log)
                )
            if time.monotonic() > deadline:
                return f"hack/tools/{group} was not built within {timeout:.0f}s"
            time.sleep(1.0)
    return None


SIDE_RUN_ENV = "QSYS_SIDE_RUN"
"""Under `make test`: the file the side run (hack/test.sh: the floor run beside the main
one, then the kind smoke test's prerequisites) creates when it ends; its pid is in the
same path with the suffix `.pid`."""


def wait_for_side_run(timeout: float = 3600.0) -> None:
    """Wait until `make test`'s side run has ended (or its process is gone): a `timing`
    test must not share the 2 cores with a control plane starting up or an image build.
    After `timeout` the test runs anyway, with a warning in the run's summary."""
    done = os.environ.get(SIDE_RUN_ENV, "")
    if not done:
        return
    path = Path(done)
    deadline = time.monotonic() + timeout
    while not path.is_file():
        try:
            pid = int(path.with_suffix(".pid").read_text())
        except (OSError, ValueError):
            pid = 0
        if pid and not Path(f"/proc/{pid}").exists():
            return
        if time.monotonic() >= deadline:
            warnings.warn(
                f"make test's side run had not ended after {timeout:.0f}s ({path} missing): "
                "this timing test shares the machine with it",
                stacklevel=2,
            )
            return
        time.sleep(1.0)


@contextmanager
def awaiting_tools(groups: Iterable[str]) -> Iterator[None]:
    """For the block (a test under `make test`): the tool groups it waited for, the only
    ones of the background build that pinned_tool hands out, here and in subprocesses."""
    before = os.environ.get(AWAITED_ENV)
    os.environ[AWAITED_ENV] = " ".join(sorted(groups))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(AWAITED_ENV, None)
        else:
            os.environ[AWAITED_ENV] = before


def pinned_tool(group: str, name: str) -> Path:
    """A built binary of hack/tools/GROUP; raises (a test fails, never skips) when missing,
    and under `make test` also when the running test did not wait for GROUP (built by now
    or not: a missing mark must fail every run, not only a cold one)."""
    build = background_build()
    awaited = os.environ.get(AWAITED_ENV)
    building = build is not None and group in build[1]
    if building and awaited is not None and group not in awaited.split():
        raise FileNotFoundError(
            f"{name}: the test did not wait for hack/tools/{group}, which `make test` "
            f"builds in the background: mark it `@pytest.mark.tools({group!r})`"
        )
    path = tool_dir(group) / name
    if not path.is_file() and building:
        assert build is not None
        raise FileNotFoundError(
            f"{name} is still being built by `make test` ({build[0] / 'log'}): mark the test "
            f"`@pytest.mark.tools({group!r})` so that it waits for the build before its "
            "timeout starts"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"{name} is not built ({path} missing): run `make cluster-tools` "
            f"(or `bash hack/tools/build.sh {group}`)"
        )
    return path


def image_names() -> dict[str, str]:
    """Component (operator, gateway, core-sim, pause) -> image reference (`make images`)."""
    out = subprocess.run(  # noqa: S603 - fixed argv of this repository's script
        [sys.executable, str(REPO / "hack" / "images.py"), "names"],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout.split()
    return {ref.rsplit("/", 1)[-1].split(":", 1)[0]: ref for ref in out}


def run_checked(args: Sequence[str | Path], timeout: float = 60, **kwargs: Any) -> str:
    """stdout of a command that must succeed; on failure the test fails with its exit code
    and the ends of its stdout and stderr (no traceback: the command is what failed)."""
    import pytest

    result = subprocess.run(  # noqa: S603 - the caller's fixed argv
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(str(a) for a in args)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-4000:]}",
            pytrace=False,
        )
    out: str = result.stdout
    return out
