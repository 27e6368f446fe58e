"""qsys_testkit.nodeshare against real processes: shared holders overlap, an exclusive one
waits for them, and a waiting exclusive one goes before a later shared one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qsys_testkit.nodeshare import FINISHED_KEPT_S, Mode, NodeShare

HOLDER = """
import os, sys, time
from pathlib import Path
from qsys_testkit.nodeshare import Mode, NodeShare
where, mode, name = Path(sys.argv[1]), Mode(sys.argv[2]), sys.argv[3]
hold, log = float(sys.argv[4]), sys.argv[5]
def event(what):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{name} {what}\\n".encode())
    os.close(fd)
share = NodeShare(where)
event("wants")
share.acquire(mode)
event("holds")
time.sleep(hold)
event("releases")
share.release()
"""


@pytest.fixture
def holders(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


def _hold(
    holders: list[subprocess.Popen[bytes]], where: Path, mode: Mode, name: str, hold: float
) -> None:
    args = [str(where), mode.value, name, str(hold), str(where / "events")]
    holders.append(subprocess.Popen([sys.executable, "-c", HOLDER, *args]))


def _wait_event(where: Path, line: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = where / "events"
        if events.exists() and line in events.read_text().splitlines():
            return
        time.sleep(0.02)
    raise AssertionError(f"no event {line!r} within {timeout}s")


def _events(where: Path) -> list[str]:
    return (where / "events").read_text().splitlines()


def test_shared_holders_overlap(tmp_path: Path, holders: list[subprocess.Popen[bytes]]) -> None:
    _hold(holders, tmp_path, Mode.SHARED, "a", 2.0)
    _wait_event(tmp_path, "a holds")
    share = NodeShare(tmp_path)
    share.acquire(Mode.SHARED)
    assert "a releases" not in _events(tmp_path)
    share.release()


def test_exclusive_waits_for_every_shared_holder(
    tmp_path: Path, holders: list[subprocess.Popen[bytes]]
) -> None:
    _hold(holders, tmp_path, Mode.SHARED, "a", 0.5)
    _wait_event(tmp_path, "a holds")
    share = NodeShare(tmp_path)
    share.acquire(Mode.EXCLUSIVE)
    assert "a releases" in _events(tmp_path)
    assert share.held is Mode.EXCLUSIVE
    _hold(holders, tmp_path, Mode.SHARED, "b", 0.0)
    _wait_event(tmp_path, "b wants")
    time.sleep(0.3)
    assert "b holds" not in _events(tmp_path)
    share.release()
    _wait_event(tmp_path, "b holds")
    assert share.held is None


def test_a_waiting_exclusive_holder_goes_before_a_later_shared_one(
    tmp_path: Path, holders: list[subprocess.Popen[bytes]]
) -> None:
    _hold(holders, tmp_path, Mode.SHARED, "reader", 0.6)
    _wait_event(tmp_path, "reader holds")
    _hold(holders, tmp_path, Mode.EXCLUSIVE, "writer", 0.3)
    _wait_event(tmp_path, "writer wants")
    time.sleep(0.1)
    _hold(holders, tmp_path, Mode.SHARED, "later", 0.0)
    _wait_event(tmp_path, "later releases")
    events = _events(tmp_path)
    assert events.index("writer releases") < events.index("later holds"), events


def test_changing_mode_releases_the_other_first(tmp_path: Path) -> None:
    share = NodeShare(tmp_path)
    share.acquire(Mode.SHARED)
    share.acquire(Mode.EXCLUSIVE)
    assert share.held is Mode.EXCLUSIVE
    share.acquire(Mode.EXCLUSIVE)
    share.release()
    share.release()
    other = NodeShare(tmp_path)
    other.acquire(Mode.EXCLUSIVE)
    other.release()


def test_a_lanes_events_count_only_in_its_own_run(tmp_path: Path) -> None:
    share = NodeShare(tmp_path)
    assert share.marked("run-1", {"a", "b"}, "started") == set()
    NodeShare(tmp_path).mark("run-1", "b", "started")
    assert share.marked("run-1", {"a", "b"}, "started") == {"b"}
    assert share.wait("run-1", {"b"}, "finished", timeout=0.0) == {"b"}
    NodeShare(tmp_path).mark("run-1", "b", "finished")
    assert share.wait("run-1", {"b"}, "finished", timeout=0.0) == set()
    assert share.wait("run-2", {"b"}, "finished", timeout=0.0) == {"b"}


def test_waiting_for_a_lane_ends_when_another_process_marks_it(
    tmp_path: Path, holders: list[subprocess.Popen[bytes]]
) -> None:
    marker = "from pathlib import Path; import sys, time; time.sleep(0.5); "
    marker += "from qsys_testkit.nodeshare import NodeShare; "
    marker += "NodeShare(Path(sys.argv[1])).mark('run', 'b', 'held')"
    holders.append(subprocess.Popen([sys.executable, "-c", marker, str(tmp_path)]))
    assert NodeShare(tmp_path).wait("run", {"b"}, "held", timeout=30.0) == set()


def test_an_earlier_runs_markers_go_after_an_hour(tmp_path: Path) -> None:
    share = NodeShare(tmp_path)
    share.mark("old", "b", "finished")
    share.mark("recent", "b", "started")
    hour_ago = time.time() - FINISHED_KEPT_S - 1
    os.utime(tmp_path / "lanes" / "old", (hour_ago, hour_ago))
    share.mark("now", "a", "started")
    assert sorted(p.name for p in (tmp_path / "lanes").iterdir()) == ["now", "recent"]
