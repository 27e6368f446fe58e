"""Set, then poll: a write that passed through the gateway is in every change
group holding the control at its next poll, the writer's and everyone else's, without
waiting for the hub's timer and without a Core poll per client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from gateway_harness import ADMIN_TOKEN, GatewayFactory

from qsys_core_sim.server import CoreSimulator
from qsys_protocol.qrc.client import QrcClient

pytestmark = pytest.mark.timeout(120)

ZONE = "Room101 Zone1 Gain"
ROUNDS = 25


async def logged_on(port: int) -> QrcClient:
    client = await QrcClient.connect("127.0.0.1", port)
    assert await client.call("Logon", {"User": "admin", "Password": ADMIN_TOKEN}) is True
    return client


def values(result: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {(c.get("Component", ""), c["Name"]): c["Value"] for c in result["Changes"]}


async def test_a_write_is_seen_by_the_next_poll_of_every_group(
    make_gateway: GatewayFactory,
) -> None:
    async with CoreSimulator() as sim:
        gw = make_gateway(sim.port)
        a, b = await logged_on(gw.qrc_port), await logged_on(gw.qrc_port)
        try:
            # A watches the component control and the Named Control; B watches the one
            # it writes (the writer's own group).
            await a.call(
                "ChangeGroup.AddComponentControl",
                {"Id": "a", "Component": {"Name": ZONE, "Controls": [{"Name": "gain"}]}},
            )
            await a.call("ChangeGroup.AddControl", {"Id": "a", "Controls": ["LobbyMusicLevel"]})
            await b.call("ChangeGroup.AddControl", {"Id": "b", "Controls": ["LobbyMusicLevel"]})
            await a.call("ChangeGroup.Poll", {"Id": "a"})
            await b.call("ChangeGroup.Poll", {"Id": "b"})
            for i in range(ROUNDS):
                level, gain = float(-1 - i), float(-30 - i)
                # Each write is followed at once by the polls: the hub's 50 ms timer has
                # no chance to run between them in most rounds, so only the write's own
                # refresh can make every round pass.
                state = await b.call("Control.Set", {"Name": "LobbyMusicLevel", "Value": level})
                assert state["Value"] == level
                assert values(await b.call("ChangeGroup.Poll", {"Id": "b"})) == {
                    ("", "LobbyMusicLevel"): level
                }
                assert values(await a.call("ChangeGroup.Poll", {"Id": "a"})) == {
                    ("", "LobbyMusicLevel"): level
                }
                assert (
                    await b.call(
                        "Component.Set",
                        {"Name": ZONE, "Controls": [{"Name": "gain", "Value": gain}]},
                    )
                    is True
                )
                assert values(await a.call("ChangeGroup.Poll", {"Id": "a"})) == {
                    (ZONE, "gain"): gain
                }
        finally:
            await a.close()
            await b.close()


async def test_a_burst_of_writes_costs_about_one_core_poll(make_gateway: GatewayFactory) -> None:
    async with CoreSimulator() as sim:
        gw = make_gateway(sim.port)
        watchers = [await logged_on(gw.qrc_port) for _ in range(5)]
        writer = await logged_on(gw.qrc_port)
        try:
            for i, w in enumerate(watchers):
                await w.call("ChangeGroup.AddControl", {"Id": i, "Controls": ["LobbyMusicLevel"]})
            await asyncio.sleep(0.3)
            loop = asyncio.get_running_loop()
            burst = 60
            polls_before, started = sim.engine.polls, loop.time()
            results = await asyncio.gather(
                *(
                    writer.call("Control.Set", {"Name": "LobbyMusicLevel", "Value": float(-v)})
                    for v in range(1, burst + 1)
                )
            )
            elapsed = loop.time() - started
            extra = sim.engine.polls - polls_before
            assert len(results) == burst
            # One hub group on the Core: the 50 ms timer accounts for elapsed / 0.05 polls;
            # per-write polling would add `burst` more, coalescing only a few.
            timer_polls = elapsed / 0.05 + 2
            assert extra - timer_polls <= 10, (extra, elapsed)
            last = sim.get_control("LobbyMusicLevel")["Value"]  # the Core's order decides
            for w_i, w in enumerate(watchers):
                got = values(await w.call("ChangeGroup.Poll", {"Id": w_i}))
                assert got == {("", "LobbyMusicLevel"): last}
        finally:
            for c in [*watchers, writer]:
                await c.close()
