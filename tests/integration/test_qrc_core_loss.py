"""`listen.qrcOnCoreLoss` (issue 13): what raw QRC clients see while the Core is away,
with a real simulator stopped and started again on the same port."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from gateway_harness import ADMIN_TOKEN, GatewayFactory

from qsys_core_sim.server import CoreSimulator
from qsys_protocol.qrc.client import ConnectionClosed, QrcClient
from qsys_protocol.qrc.errors import QrcError

pytestmark = pytest.mark.timeout(120)

ZONE = "Room101 Zone1 Gain"
GROUP = {"Id": "g", "Component": {"Name": ZONE, "Controls": [{"Name": "gain"}]}}


async def logged_on(port: int) -> QrcClient:
    client = await QrcClient.connect("127.0.0.1", port)
    assert await client.call("Logon", {"User": "admin", "Password": ADMIN_TOKEN}) is True
    return client


async def reconnect(port: int, timeout: float = 30.0) -> QrcClient:
    """What a Core client does after its socket closed: connect and Logon until it works."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await logged_on(port)
            except (OSError, ConnectionClosed, QrcError):
                await asyncio.sleep(0.2)


def gain_of(result: dict[str, Any]) -> list[float]:
    return [c["Value"] for c in result["Changes"] if c.get("Component") == ZONE]


async def ws_call(ws: aiohttp.ClientWebSocketResponse, rid: int, method: str, params: Any) -> Any:
    await ws.send_json({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive_json()
            if msg.get("id") == rid:
                return msg


async def test_close_mirrors_the_core(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """The default: sockets close on loss, new ones are refused while the Core is away, a
    client that reconnects and re-creates its groups works, other transports' groups stay."""
    async with CoreSimulator(idle_timeout=None) as sim:
        gw = await asyncio.to_thread(make_gateway, sim.port)
        assert "qrcOnCoreLoss" not in gw.config["listen"]  # the default is under test
        client = await logged_on(gw.qrc_port)
        await client.call("ChangeGroup.AddComponentControl", GROUP)
        assert gain_of(await client.call("ChangeGroup.Poll", {"Id": "g"})) == [-20.0]
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with http.ws_connect(gw.ws_url, headers=headers) as ws:
            added = await ws_call(ws, 1, "ChangeGroup.AddComponentControl", GROUP)
            assert added["result"] is True
            assert gain_of((await ws_call(ws, 2, "ChangeGroup.Poll", {"Id": "g"}))["result"]) == [
                -20.0
            ]

            await sim.stop()
            await asyncio.wait_for(client.closed.wait(), 10)  # as a Core's socket would
            with pytest.raises((ConnectionClosed, OSError, QrcError)):
                await logged_on(gw.qrc_port)  # refused while the Core is away
            assert (await ws_call(ws, 3, "Control.Get", ["MainGain"]))["error"]["code"] == -32050

            await sim.start()
            sim.set_control("gain", -33.0, ZONE)
            again = await reconnect(gw.qrc_port)
            try:
                assert await again.call("ChangeGroup.AddComponentControl", GROUP) is True
                first = await again.call("ChangeGroup.Poll", {"Id": "g"})
                assert gain_of(first) == [-33.0]
                assert await again.call("Control.Set", {"Name": "MainGain", "Value": -5})
            finally:
                await again.close()
            # the WebSocket client's group survived the outage and sees the change
            async with asyncio.timeout(15):
                while True:
                    polled = await ws_call(ws, 4, "ChangeGroup.Poll", {"Id": "g"})
                    if gain_of(polled["result"]) == [-33.0]:
                        break
                    await asyncio.sleep(0.1)
        await client.close()


async def test_keep_holds_sockets_and_groups(make_gateway: GatewayFactory) -> None:
    async with CoreSimulator(idle_timeout=None) as sim:

        def keep(config: dict[str, Any]) -> None:
            config["listen"]["qrcOnCoreLoss"] = "keep"

        gw = await asyncio.to_thread(make_gateway, sim.port, keep)
        client = await logged_on(gw.qrc_port)
        try:
            await client.call("ChangeGroup.AddComponentControl", GROUP)
            assert gain_of(await client.call("ChangeGroup.Poll", {"Id": "g"})) == [-20.0]
            await sim.stop()
            async with asyncio.timeout(10):
                while True:
                    resp = await client.request("Control.Get", ["MainGain"])
                    if resp.error is not None:
                        break
                    await asyncio.sleep(0.1)
            assert resp.error["code"] == -32050
            # the group is held by the gateway: polls answer (nothing new) during the outage
            assert (await client.call("ChangeGroup.Poll", {"Id": "g"}))["Changes"] == []
            newcomer = await logged_on(gw.qrc_port)  # admitted, and told the Core is away
            resp = await newcomer.request("StatusGet", 0)
            await newcomer.close()
            assert not client.closed.is_set()
            await sim.start()
            sim.set_control("gain", -44.0, ZONE)
            async with asyncio.timeout(20):
                while True:
                    changes = gain_of(await client.call("ChangeGroup.Poll", {"Id": "g"}))
                    if changes:
                        break
                    await asyncio.sleep(0.1)
            assert changes == [-44.0]  # same socket, same group, no re-add
        finally:
            await client.close()
