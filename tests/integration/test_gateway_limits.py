"""Rate limits measured against the real gateway (memory and a real redis-server), maxClients."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from gateway_harness import PANEL_TOKEN, GatewayFactory

from qsys_protocol.qrc.client import QrcClient
from qsys_testkit import RedisProcess

pytestmark = pytest.mark.timing

RATE = 10.0
LOAD = 5 * RATE
SECONDS = 6.0
WARMUP = 1.0


@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_accepted_rate_within_10_percent_under_5x_load(
    storage: str,
    module_sim_port: int,
    make_gateway: GatewayFactory,
    request: pytest.FixtureRequest,
) -> None:
    url = "memory"
    if storage == "redis":
        server: RedisProcess = request.getfixturevalue("qsys_redis")
        url = server.url

    def edit(c: dict[str, Any]) -> None:
        c["limits"]["storage"] = url
        c["subjects"][1]["rate"] = {"requestsPerSecond": RATE, "burst": int(RATE)}

    gw = await asyncio.to_thread(make_gateway, module_sim_port, edit)
    headers = {"Authorization": f"Bearer {PANEL_TOKEN}"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "NoOp", "params": {}}
    accepted: list[float] = []
    refused = 0
    other: list[int] = []
    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(sent: float) -> None:
            nonlocal refused
            async with http.post(f"{gw.url}/v1/rpc", json=body, headers=headers) as r:
                await r.read()
                if r.status == 200:
                    accepted.append(sent)
                elif r.status == 429:
                    refused += 1
                else:
                    other.append(r.status)

        start = time.monotonic()
        tasks = []
        for i in range(int(LOAD * SECONDS)):
            target = start + i / LOAD
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(time.monotonic() - start)))
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        elapsed = time.monotonic() - start
    assert not other, other
    assert elapsed < SECONDS * 1.5, "the load generator could not keep up"
    steady = [t for t in accepted if t >= WARMUP]
    rate = len(steady) / (SECONDS - WARMUP)
    assert abs(rate - RATE) <= 0.1 * RATE, (rate, len(accepted), refused)
    assert refused >= 0.6 * LOAD * SECONDS
    if storage == "redis":
        async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/healthz") as r:
            assert (await r.json())["components"]["rateLimitStorage"] == "ok"


async def test_max_clients_enforced(module_sim_port: int, make_gateway: GatewayFactory) -> None:
    def edit(c: dict[str, Any]) -> None:
        c["limits"]["maxClients"] = 3

    gw = await asyncio.to_thread(make_gateway, module_sim_port, edit)
    headers = {"Authorization": f"Bearer {PANEL_TOKEN}"}
    async with aiohttp.ClientSession() as http:
        first = await http.ws_connect(gw.ws_url, headers=headers)
        qrc = [await QrcClient.connect("127.0.0.1", gw.qrc_port) for _ in range(2)]
        try:
            for c in qrc:  # maxClients counts clients that logged on
                await c.call("Logon", {"User": "panel", "Password": PANEL_TOKEN})
            await asyncio.sleep(0.3)
            assert gw.metric("qsys_gateway_clients") == 3
            async with http.get(
                gw.ws_url.replace("ws://", "http://"),
                headers={
                    **headers,
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Version": "13",
                },
            ) as r:
                assert r.status == 503
                assert (await r.json())["error"]["code"] == -32050
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.qrc_port)
            frame = await asyncio.wait_for(reader.readuntil(b"\x00"), 10)
            assert b"-32050" in frame
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            # HTTP is not a held client: still served
            async with http.post(
                f"{gw.url}/v1/rpc",
                json={"jsonrpc": "2.0", "id": 1, "method": "NoOp", "params": {}},
                headers=headers,
            ) as r:
                assert r.status == 200
            await first.close()
            await asyncio.sleep(0.5)
            again = await http.ws_connect(gw.ws_url, headers=headers)
            await again.close()
        finally:
            for c in qrc:
                await c.close()
            await first.close()
