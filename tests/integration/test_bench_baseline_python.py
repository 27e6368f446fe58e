"""`python -m bench gateway --baseline DIR --baseline-python PY`: the baseline's gateway
runs DIR's source under PY (how the bench compares Python versions), and serves."""

from __future__ import annotations

import sys
from pathlib import Path

import aiohttp
import pytest
from bench.__main__ import main as bench_main
from bench.common import gateway

from qsys_testkit import SimulatorProcess

REPO = Path(__file__).resolve().parents[2]
TOKEN = "bench-baseline-python-token-0123456789"


async def test_the_baseline_gateway_runs_under_the_given_interpreter(
    module_sim: SimulatorProcess, http: aiohttp.ClientSession
) -> None:
    python = Path(sys.executable)
    with gateway(
        module_sim.port,
        token=TOKEN,
        methods=["Control.Get"],
        max_clients=10,
        ready="healthz",
        source=REPO,
        python=python,
    ) as gw:
        argv = Path(f"/proc/{gw.pid}/cmdline").read_bytes().split(b"\0")
        assert argv[:3] == [str(python).encode(), b"-m", b"qsys_gateway.cli"]
        body = {"jsonrpc": "2.0", "method": "Control.Get", "params": ["MainGain"], "id": 1}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(f"{gw.url}/v1/rpc", json=body, headers=headers) as resp:
            assert resp.status == 200
            reply = await resp.json()
        assert reply["id"] == 1
        assert "result" in reply


def test_baseline_python_needs_a_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench_main(["gateway", "--baseline-python", sys.executable])
    assert exit_.value.code == 2
    assert "--baseline-python needs --baseline" in capsys.readouterr().err
