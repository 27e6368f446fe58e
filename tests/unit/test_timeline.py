"""qsys_testkit.timeline: the lines tests append and the per-group summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qsys_testkit import timeline


def test_records_sum_up_per_run_and_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "timeline"
    monkeypatch.setenv(timeline.TIMELINE_ENV, str(path))
    monkeypatch.delenv(timeline.RUN_ENV, raising=False)
    timeline.record("e2e-node", "a", 1000.0, 1100.0, 1150.0)
    timeline.record("e2e-node", "b", 1150.0, 1150.0, 1400.0)
    timeline.record("unit", "c", 1005.0, 1005.0, 1006.0)
    monkeypatch.setenv(timeline.RUN_ENV, "floor")
    timeline.record("e2e", "d", 1000.0, 1500.0, 1560.0)

    out = subprocess.run(
        [sys.executable, "-m", "qsys_testkit.timeline", str(path), "1000"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out == [
        "timeline: main/unit: 1 tests, from 5 s to 6 s; waited for tools 0 s, ran 1 s",
        "timeline: main/e2e-node: 2 tests, from 100 s to 400 s; waited for tools 100 s, ran 300 s",
        "timeline: floor/e2e: 1 tests, from 500 s to 560 s; waited for tools 500 s, ran 60 s",
    ]


def test_nothing_is_written_outside_make_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(timeline.TIMELINE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    timeline.record("unit", "a", 1.0, 2.0, 3.0)
    assert list(tmp_path.iterdir()) == []
    assert timeline.summary([], 0.0) == []
