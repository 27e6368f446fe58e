"""The test kit as a user's CI would use it: one statement starts a simulator and a
gateway in front of it, and everything it started is gone afterwards, also on failure."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qsys_testkit import (
    CoreSimulator,
    GatewayProcess,
    SimulatorProcess,
    gateway_config,
    port_open,
    stop_process,
    subject,
    wait_for,
)

TOKEN = "ci-3c1f5e7a9b2d4f6081a3c5e7f9b1d3e5"
OTHER = "ci-8e6c4a2f0d9b7e5c3a1f8d6b4e2c0a97"
KEY = b"testkit-token-key-0123456789abcdef0123"


def test_simulator_and_gateway_in_one_statement() -> None:
    with (
        SimulatorProcess() as sim,
        GatewayProcess(
            gateway_config(sim.port, [subject("ci", TOKEN, methods=["StatusGet"])])
        ) as gw,
    ):
        assert gw.rpc(TOKEN, "StatusGet")[0] == 200
    assert sim.proc is not None
    assert sim.proc.poll() is not None
    assert not port_open(sim.port)


def test_keyed_tokens_and_everything_stopped_afterwards() -> None:
    """The token stored as the operator renders it (HMAC under a key file); a reload
    keeps the key file."""
    config = gateway_config(0, [subject("ci", TOKEN, methods=["StatusGet"], key=KEY)])
    assert "tokenSha256" not in config["subjects"][0]
    with SimulatorProcess() as sim:
        config["core"]["port"] = sim.port
        with GatewayProcess(config, token_key=KEY) as gw:
            status, body = gw.rpc(TOKEN, "StatusGet")
            assert status == 200, body
            assert body["result"]["State"] == "Active"
            assert gw.rpc(TOKEN, "Component.GetComponents")[0] == 403
            assert gw.rpc("not-the-token", "StatusGet")[0] == 401
            assert "Component.GetComponents" in {line.get("method") for line in gw.audit_lines()}
            again = copy.deepcopy(config)
            again["subjects"].append(subject("ci2", OTHER, methods=["StatusGet"], key=KEY))
            gw.write_config(again)
            wait_for("the reload", lambda: gw.rpc(OTHER, "StatusGet")[0] == 200, timeout=20)
            directory, ports = gw.dir, (gw.http_port, gw.qrc_port, gw.metrics_port)
        assert gw.proc is not None
        assert gw.proc.returncode == 0
        assert not directory.exists()  # its own temporary directory is removed
        assert not any(port_open(p) for p in ports)
    assert sim.proc is not None
    assert sim.proc.poll() is not None
    assert not port_open(sim.port)


def test_a_program_that_dies_while_starting_fails_at_once(tmp_path: Path) -> None:
    config = gateway_config(1, [subject("ci", TOKEN, methods=["StatusGet"])])
    config["limits"]["maxClients"] = -1  # refused by the config model: exit 2
    gw = GatewayProcess(config, tmp_path)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="qsys-gateway exited with 2") as info, gw:
        pass
    assert time.monotonic() - started < 15  # not the 20 s readiness bound
    assert "maxClients" in str(info.value)  # the end of its log says why


def test_stop_kills_what_ignores_sigterm() -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(1, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"1\n"
        started = time.monotonic()
        assert stop_process(proc, timeout=1) == -9
        assert time.monotonic() - started < 5
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_killed_simulator_comes_back_on_the_same_port() -> None:
    with SimulatorProcess() as sim:
        sim.kill()
        assert not port_open(sim.port)
        sim.start()
        assert port_open(sim.port)


def test_wait_for_is_bounded_and_returns_the_value() -> None:
    assert wait_for("a value", lambda: "x", timeout=1) == "x"
    with pytest.raises(TimeoutError, match="never"):
        wait_for("never", lambda: None, timeout=0.3, interval=0.05)


async def test_async_with_keeps_the_event_loop_running() -> None:
    """The in-process simulator answers on this loop while the gateway waits for /healthz
    (connected to the Core) in a thread."""
    async with CoreSimulator(port=0) as sim:
        config = gateway_config(sim.port, [subject("ci", TOKEN, methods=["StatusGet"])])
        async with GatewayProcess(config, ready="healthz") as gw:
            assert (await asyncio.to_thread(gw.rpc, TOKEN, "StatusGet"))[0] == 200
        assert gw.proc is not None
        assert gw.proc.returncode == 0
