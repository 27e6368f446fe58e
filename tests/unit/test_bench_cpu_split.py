"""The bench's per-process CPU split and the throughput ceilings it prints beside the raw QRC
50-client ratio."""

from __future__ import annotations

import os
import time

from bench.common import CpuSplit, Result
from bench.gateway import cpu_split_notes


def _split(calls: int, seconds: float, machine: float, **used: float) -> CpuSplit:
    s = CpuSplit({name: 0 for name in used}, seconds=seconds, machine=machine, calls=calls)
    s.used = dict(used)
    return s


def _row(split: CpuSplit | None) -> Result:
    return Result("t", "s", 1, 0, 1.0, cpu_split=split)


def test_a_split_times_this_process_and_the_machine() -> None:
    split = CpuSplit({"me": os.getpid()})
    split.start()
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    split.stop()
    assert split.seconds >= 0.15
    assert 0.1 <= split.used["me"] <= split.seconds + 0.05
    assert split.machine >= split.used["me"] - 0.02
    assert 0.0 < split.cores("me") <= 1.1


def test_the_ceilings_follow_each_process_cpu_per_call() -> None:
    direct = _split(
        100_000, 1.0, 1.9, **{"load generator": 0.3, "simulator": 0.6}
    )  # 3 and 6 us per call
    gateway = _split(
        25_000, 1.0, 2.0, **{"load generator": 0.1, "gateway": 0.75, "simulator": 0.15}
    )  # 4, 30 and 6 us per call
    split_line, ceiling = cpu_split_notes(_row(gateway), _row(direct))
    assert "simulator 0.60 (6.0 us), rest of the machine 1.00" in split_line
    assert "gateway 0.75 (30.0 us)" in split_line
    assert "kept 75% of one core busy" in ceiling
    assert "serves 33,333 req/s against 166,667 direct" in ceiling
    assert "at most 0.20x" in ceiling
    assert "0.5x needs <= 12.0 us per call" in ceiling
    cpus = os.cpu_count() or 1
    assert f"together need 40.0 us per call: {cpus / 40e-6:,.0f} req/s on {cpus} CPUs" in ceiling


def test_no_ceilings_without_a_split() -> None:
    assert cpu_split_notes(_row(None), _row(_split(1, 1.0, 1.0, simulator=0.1))) == []
    assert cpu_split_notes(_row(_split(0, 1.0, 1.0, gateway=0.1)), _row(None)) == []
