"""SIGTERM with calls in flight: none lost, clients closed cleanly, exit 0."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from gateway_harness import ADMIN_TOKEN, PANEL_TOKEN, GatewayFactory

from qsys_core_sim.server import CoreSimulator
from qsys_protocol.qrc.client import QrcClient


async def test_sigterm_with_calls_in_flight(make_sim: Any, make_gateway: GatewayFactory) -> None:
    sim: CoreSimulator = await make_sim(idle_timeout=None)
    gw = await asyncio.to_thread(make_gateway, sim.port)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        ws = await http.ws_connect(gw.ws_url, headers={"Authorization": f"Bearer {PANEL_TOKEN}"})
        qrc = await QrcClient.connect("127.0.0.1", gw.qrc_port)
        await qrc.call("Logon", {"User": "admin", "Password": ADMIN_TOKEN})
        sim.faults.latency = 1.5

        async def http_call(i: int) -> tuple[int, Any]:
            body = {
                "jsonrpc": "2.0",
                "id": i,
                "method": "Control.Set",
                "params": {"Name": "LobbyMusicLevel", "Value": -10 - i},
            }
            async with http.post(f"{gw.url}/v1/rpc", json=body, headers=headers) as r:
                return r.status, await r.json()

        calls = [asyncio.create_task(http_call(i)) for i in range(10)]
        qrc_call = asyncio.create_task(qrc.request("StatusGet", 0, timeout=20))
        await ws.send_json({"jsonrpc": "2.0", "id": 77, "method": "NoOp", "params": {}})
        await asyncio.sleep(0.5)
        started = time.monotonic()
        gw.terminate()
        await asyncio.sleep(0.3)
        # new connections are refused (or told the gateway is going away)
        try:
            async with http.get(f"{gw.url}/readyz") as r:
                assert r.status == 503
        except aiohttp.ClientConnectionError:
            pass
        results = await asyncio.wait_for(asyncio.gather(*calls), 25)
        assert [s for s, _ in results] == [200] * 10, results
        assert all(body["result"] is not None for _, body in results)
        qrc_reply = await asyncio.wait_for(qrc_call, 25)
        assert qrc_reply.result["State"] == "Active"
        got_reply = False
        close_code = None
        async with asyncio.timeout(25):
            while True:
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    got_reply = got_reply or '"id":77' in msg.data.replace(" ", "")
                    continue
                # the close frame the gateway sent (it may drop TCP before our reply)
                assert msg.type == aiohttp.WSMsgType.CLOSE, msg
                close_code = msg.data
                break
        assert got_reply
        assert close_code == 1001
        await asyncio.wait_for(qrc.closed.wait(), 25)
        await qrc.close()
        code = await asyncio.to_thread(gw.wait, 30)
    assert code == 0
    assert time.monotonic() - started < 25
    # every write made it to the Core: the last value is one the clients set
    assert sim.get_control("LobbyMusicLevel")["Value"] in [-10 - i for i in range(10)]
    messages = [line["message"] for line in gw.log_lines()]
    assert "stopped" in messages
    assert "Traceback" not in gw.stderr()


async def test_a_kept_alive_connection_is_answered_while_draining(
    make_sim: Any, make_gateway: GatewayFactory
) -> None:
    """A Service may route a call to a terminating pod for a while: a request on a
    connection accepted before SIGTERM is answered, and the connection then closed."""
    sim: CoreSimulator = await make_sim(idle_timeout=None)
    gw = await asyncio.to_thread(make_gateway, sim.port)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "StatusGet", "params": {}}
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as slow,
        aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=1)) as kept,
    ):
        async with kept.post(f"{gw.url}/v1/rpc", json=body, headers=headers) as r:
            assert r.status == 200
            assert r.headers.get("Connection", "").lower() != "close"
            await r.read()
        sim.faults.latency = 2.0
        draining = asyncio.create_task(slow.post(f"{gw.url}/v1/rpc", json=body, headers=headers))
        await asyncio.sleep(0.3)
        gw.terminate()
        await asyncio.sleep(0.3)
        async with kept.post(f"{gw.url}/v1/rpc", json=body, headers=headers) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["result"]["State"] == "Active"
            assert r.headers.get("Connection", "").lower() == "close"
        async with await draining as r:
            assert r.status == 200
        assert await asyncio.to_thread(gw.wait, 30) == 0
