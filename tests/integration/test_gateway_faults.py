"""Faults of the Core behind the real gateway: kill mid-call, restart, hang, fail-over."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from gateway_harness import ADMIN_TOKEN, PANEL_TOKEN, GatewayFactory

from qsys_core_sim.server import CoreSimulator
from qsys_gateway.transports.http import READY_WAIT_S
from qsys_testkit import GatewayProcess, SimulatorProcess
from qsys_testkit.net import free_port

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def call(method: str, params: Any = None, rid: int = 1) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


async def post(
    http: aiohttp.ClientSession, gw: GatewayProcess, body: Any
) -> tuple[int, Any, dict[str, str]]:
    async with http.post(f"{gw.url}/v1/rpc", json=body, headers=AUTH) as r:
        return r.status, json.loads(await r.text()), dict(r.headers)


async def until(check: Any, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll an async `check` until it returns a truthy value (bounded in time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await check()
        if got:
            return got
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s")


async def health(http: aiohttp.ClientSession, gw: GatewayProcess) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{gw.url}/healthz") as r:
        return r.status, await r.json()


async def test_core_killed_mid_call_then_back(
    qsys_simulator: Any, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim: CoreSimulator = await qsys_simulator(idle_timeout=None)
    gw = await asyncio.to_thread(make_gateway, sim.port)
    assert (await post(http, gw, call("StatusGet")))[0] == 200
    sim.faults.latency = 2.0
    in_flight = asyncio.create_task(post(http, gw, call("StatusGet")))
    await asyncio.sleep(0.5)
    await sim.stop()  # the Core dies with a call in flight
    started = time.monotonic()
    status, body, headers = await asyncio.wait_for(in_flight, 15)
    assert status == 503, body
    assert body["error"]["code"] == -32050
    assert int(headers["Retry-After"]) >= 1
    assert time.monotonic() - started < 10
    # while the Core is down: 503 fast, health degraded, readiness stays 200
    status, body, _ = await post(http, gw, call("StatusGet"))
    assert status == 503
    assert body["error"]["code"] == -32050
    status, h = await until(
        lambda: _degraded(http, gw), 15, what="healthz degraded while the Core is down"
    )
    assert status == 200
    assert h["components"]["upstream"] == "down"
    async with http.get(f"{gw.url}/readyz") as r:
        assert r.status == 200
    assert gw.metric("qsys_gateway_upstream_up") == 0
    sim.faults.clear()
    await sim.start()

    async def ok() -> bool:
        return (await post(http, gw, call("StatusGet")))[0] == 200

    await until(ok, 30, 0.5, what="calls succeed after the Core is back")
    assert (await health(http, gw))[1]["status"] == "healthy"
    assert gw.metric("qsys_gateway_upstream_reconnects_total") >= 1


async def _degraded(
    http: aiohttp.ClientSession, gw: GatewayProcess
) -> tuple[int, dict[str, Any]] | None:
    status, body = await health(http, gw)
    return (status, body) if body["status"] == "degraded" else None


async def test_core_restart_restores_change_groups_and_autopoll(
    qsys_simulator: Any, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim: CoreSimulator = await qsys_simulator(idle_timeout=None)
    gw = await asyncio.to_thread(make_gateway, sim.port)
    headers = {"Authorization": f"Bearer {PANEL_TOKEN}"}
    async with http.ws_connect(gw.ws_url, headers=headers) as ws:
        component = {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain"}]}
        await ws.send_json(
            call("ChangeGroup.AddComponentControl", {"Id": "g", "Component": component}, 1)
        )
        await ws.send_json(call("ChangeGroup.AutoPoll", {"Id": "g", "Rate": 0.2}, 2))
        replies: dict[int, Any] = {}

        async def next_push(value: float | None, timeout: float) -> dict[str, Any]:
            async with asyncio.timeout(timeout):
                while True:
                    msg = await ws.receive_json()
                    if "id" in msg and "method" not in msg:
                        replies[msg["id"]] = msg
                        continue
                    if msg.get("method") != "ChangeGroup.Poll":
                        continue
                    changes = msg["params"]["Changes"]
                    if value is None or any(c.get("Value") == value for c in changes):
                        return dict(msg)

        await next_push(None, 10)
        assert replies[1]["result"] is True
        assert replies[2]["result"] is True
        await sim.restart(downtime=1.0)
        sim.set_control("gain", -41.0, "Room101 Zone1 Gain")
        push = await next_push(-41.0, 30)
        assert push["params"]["Id"] == "g"
        assert sim.engine.change_group_count >= 1  # re-created on the restarted Core
        sim.set_control("gain", -42.0, "Room101 Zone1 Gain")
        await next_push(-42.0, 10)
    assert gw.metric("qsys_gateway_upstream_reconnects_total") >= 1


async def test_hung_core_timeout_then_circuit_open_then_recovery(
    qsys_simulator: Any, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim: CoreSimulator = await qsys_simulator(idle_timeout=None)

    def edit(c: dict[str, Any]) -> None:
        c["core"]["requestTimeoutSeconds"] = 0.5

    gw = await asyncio.to_thread(make_gateway, sim.port, edit)
    assert (await post(http, gw, call("StatusGet")))[0] == 200
    sim.faults.swallow_replies = -1
    status, body, _ = await post(http, gw, call("StatusGet"))
    assert status == 504
    assert body["error"]["code"] == -32008
    statuses = [status]
    for _ in range(15):
        status, body, headers = await post(http, gw, call("StatusGet"))
        statuses.append(status)
        if status == 503:
            break
    assert statuses[-1] == 503, statuses
    assert body["error"]["code"] == -32050
    assert "Retry-After" in headers
    assert gw.metric("qsys_gateway_circuit_state") == 2
    started = time.monotonic()
    status, _, _ = await post(http, gw, call("StatusGet"))
    assert status == 503
    assert time.monotonic() - started < 0.4  # open circuit answers at once
    sim.faults.clear()

    async def ok() -> bool:
        return (await post(http, gw, call("StatusGet")))[0] == 200

    await until(ok, 40, 0.5, what="recovery after the Core answers again")
    assert gw.metric("qsys_gateway_circuit_state") == 0


async def test_redundant_failover(
    qsys_simulator: Any, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    primary: CoreSimulator = await qsys_simulator(idle_timeout=None)
    backup: CoreSimulator = await qsys_simulator(
        host="127.0.0.2", port=primary.port, idle_timeout=None
    )
    backup.set_state("Standby")

    def edit(c: dict[str, Any]) -> None:
        c["core"]["redundantHost"] = "127.0.0.2"

    gw = await asyncio.to_thread(make_gateway, primary.port, edit)

    async def active_host() -> str:
        async with http.get(f"{gw.url}/v1/status", headers=AUTH) as r:
            return str((await r.json())["upstream"]["activeHost"])

    assert await active_host() == "127.0.0.1"
    # the primary fails; the backup takes over
    await primary.stop()
    backup.set_state("Active")

    async def ok() -> bool:
        status, body, _ = await post(http, gw, call("StatusGet"))
        return status == 200 and body["result"]["State"] == "Active"

    await until(ok, 30, 0.5, what="calls served by the redundant Core")
    assert await active_host() == "127.0.0.2"
    # the backup goes on standby again and the primary is back active: the gateway moves back
    await primary.start()
    backup.set_state("Standby")
    await until(ok, 30, 0.5, what="calls served by the primary after the backup went standby")
    assert await active_host() == "127.0.0.1"


async def test_core_process_sigkilled_then_started_again(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    with SimulatorProcess() as sim:
        gw = await asyncio.to_thread(make_gateway, sim.port)
        assert (await post(http, gw, call("StatusGet")))[0] == 200
        sim.kill()  # SIGKILL: no goodbye on the socket
        status, body, headers = await post(http, gw, call("StatusGet"))
        assert status == 503, body
        assert body["error"]["code"] == -32050
        assert "Retry-After" in headers
        async with http.get(f"{gw.url}/readyz") as r:
            assert r.status == 200
        await asyncio.to_thread(sim.start)

        async def ok() -> bool:
            return (await post(http, gw, call("StatusGet")))[0] == 200

        await until(ok, 30, 0.5, what="calls succeed after the Core process is back")


async def test_a_starting_gateway_is_ready_once_its_core_answers_or_after_the_wait(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A rollout must not route calls to a pod still connecting to its Core; a Core that
    never answers must not keep the pod unready either."""
    gw = await asyncio.to_thread(make_gateway, free_port(), start=False)
    gw.ready = None
    await asyncio.to_thread(gw.start)
    started = time.monotonic()

    async def live() -> bool:
        try:
            async with http.get(f"{gw.url}/livez") as r:
                return r.status == 200
        except aiohttp.ClientConnectionError:
            return False

    await until(live, 20, what="the gateway's listeners")
    async with http.get(f"{gw.url}/readyz") as r:
        assert r.status == 503
        assert (await r.json())["status"] == "connecting to the Core"
    await asyncio.to_thread(gw.wait_ready, READY_WAIT_S + 10)
    assert time.monotonic() - started >= READY_WAIT_S - 1
