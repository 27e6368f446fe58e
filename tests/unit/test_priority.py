"""qsys_testkit.priority against real processes: a child with a thread and a grandchild."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CHILD = textwrap.dedent(
    """
    import os, subprocess, sys, threading, time
    from qsys_testkit import priority

    grandchild = subprocess.Popen(["sleep", "60"])
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    mode = sys.argv[1]
    if mode == "tree":
        reached = priority.renice_tree(int(sys.argv[2]))
    else:
        priority.prioritize(False)
        if mode == "critical":
            priority.prioritize(True)
        reached = []
    print(grandchild.pid, *reached, flush=True)
    sys.stdin.read()
    grandchild.kill()
    """
)


def nice_of_threads(pid: int) -> set[int]:
    values = set()
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        values.add(int(stat.read_text().rsplit(")", 1)[1].split()[16]))
    return values


def run_child(*args: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], list[int]]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, "the child printed nothing"
    return child, [int(pid) for pid in line.split()]


def stop(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    try:
        child.wait(10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(10)


@pytest.fixture
def env() -> dict[str, str]:
    clean = {key: value for key, value in os.environ.items() if key != "QSYS_BESIDE_NICE"}
    return clean


def test_renice_tree_reaches_every_thread_of_the_tree_and_nothing_else(
    env: dict[str, str],
) -> None:
    own = nice_of_threads(os.getpid())
    base = os.getpriority(os.PRIO_PROCESS, 0)
    child, (grandchild, *reached) = run_child("tree", str(base + 4), env=env)
    try:
        assert child.pid in reached
        assert grandchild in reached
        assert len(list(Path(f"/proc/{child.pid}/task").iterdir())) >= 2
        assert nice_of_threads(child.pid) == {base + 4}
        assert nice_of_threads(grandchild) == {base + 4}
        assert nice_of_threads(os.getpid()) == own
    finally:
        stop(child)


@pytest.mark.parametrize(("critical", "raised"), [(False, 3), (True, 0)])
def test_prioritize_raises_the_niceness_off_the_critical_path_and_lowers_it_back(
    env: dict[str, str], critical: bool, raised: int
) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    child, (grandchild,) = run_child(
        "critical" if critical else "beside", env=env | {"QSYS_BESIDE_NICE": "3"}
    )
    try:
        assert nice_of_threads(child.pid) == {base + raised}
        assert nice_of_threads(grandchild) == {base + raised}
    finally:
        stop(child)


def test_prioritize_changes_nothing_outside_make_test(env: dict[str, str]) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    child, (grandchild,) = run_child("beside", env=env)
    try:
        assert nice_of_threads(child.pid) == {base}
        assert nice_of_threads(grandchild) == {base}
    finally:
        stop(child)
