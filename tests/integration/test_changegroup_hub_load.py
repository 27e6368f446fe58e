"""The change-group hub under load: client calls that fill the upstream connections'
pending slots must not unseat the hub's Core groups while the link is up (it used to log
"could not place the change-group hub on the Core: no connection to the Core", drop its
groups and re-create them, and change groups went quiet meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from gateway_harness import ADMIN_TOKEN, GatewayFactory

from qsys_core_sim.server import CoreSimulator
from qsys_protocol.qrc.client import QrcClient
from qsys_protocol.qrc.errors import QrcError

pytestmark = pytest.mark.timeout(120)

ZONE = "Room101 Zone1 Gain"
GROUP = {"Id": "g", "Component": {"Name": ZONE, "Controls": [{"Name": "gain"}]}}
FLOODERS = 24
"""x 32 calls in flight each (the per-connection bound): 768, more than the 2 x 256 the
upstream connections take, so some client calls are refused as Core-busy."""


async def logged_on(port: int) -> QrcClient:
    client = await QrcClient.connect("127.0.0.1", port)
    assert await client.call("Logon", {"User": "admin", "Password": ADMIN_TOKEN}) is True
    return client


async def flood(client: QrcClient, stop: asyncio.Event, outcomes: dict[str, int]) -> None:
    async def one() -> None:
        while not stop.is_set():
            resp = await client.request("Control.Get", ["MainGain"], timeout=30)
            key = "ok" if resp.error is None else str(resp.error.get("code"))
            outcomes[key] = outcomes.get(key, 0) + 1

    await asyncio.gather(*(one() for _ in range(32)))


def gains(result: dict[str, Any]) -> list[float]:
    return [c["Value"] for c in result["Changes"] if c.get("Component") == ZONE]


async def test_busy_upstream_never_unseats_the_hub(make_gateway: GatewayFactory) -> None:
    async with CoreSimulator(idle_timeout=None) as sim:

        def unlimited(config: dict[str, Any]) -> None:
            config["limits"]["rate"] = {"requestsPerSecond": 100000, "burst": 100000}
            # One subject may fill the connection's pending slots (the per-subject share
            # would otherwise hold its calls back before the slots are full).
            config["limits"]["maxPendingCoreCallsPerSubject"] = 512

        gw = await asyncio.to_thread(make_gateway, sim.port, unlimited)
        watcher = await logged_on(gw.qrc_port)
        flooders = [await logged_on(gw.qrc_port) for _ in range(FLOODERS)]
        stop = asyncio.Event()
        outcomes: dict[str, int] = {}
        tasks: list[asyncio.Task[None]] = []
        try:
            assert await watcher.call("ChangeGroup.AddComponentControl", GROUP) is True
            assert gains(await watcher.call("ChangeGroup.Poll", {"Id": "g"})) == [-20.0]
            sim.faults.latency = 0.05  # a busy Core: calls pile up in the pending slots
            tasks = [asyncio.create_task(flood(c, stop, outcomes)) for c in flooders]
            await asyncio.sleep(1.5)
            for step in range(1, 4):
                sim.set_control("gain", -20.0 - step, ZONE)
                async with asyncio.timeout(10):  # the hub keeps polling through the flood
                    while gains(await watcher.call("ChangeGroup.Poll", {"Id": "g"})) != [
                        -20.0 - step
                    ]:
                        await asyncio.sleep(0.05)
        finally:
            stop.set()
            sim.faults.latency = 0.0
            for task in tasks:
                with contextlib.suppress(QrcError, asyncio.TimeoutError):
                    await asyncio.wait_for(task, 30)
            for client in [watcher, *flooders]:
                await client.close()
        assert outcomes.get("ok", 0) > 0
        assert outcomes.get("-32050", 0) > 0, outcomes  # the upstream slots were really full
        lines = await asyncio.to_thread(gw.log_lines)
        unseated = [x for x in lines if "change-group hub" in str(x.get("message"))]
        assert unseated == [], unseated[:3]
