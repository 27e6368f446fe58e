"""TLS on every listener of the real gateway: HTTPS (with HSTS), WSS and QRC over TLS."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from gateway_harness import ADMIN_TOKEN, PANEL_TOKEN, base_config, client_tls, self_signed_cert

from qsys_protocol.qrc.client import QrcClient
from qsys_testkit import GatewayProcess, SimulatorProcess


@pytest.fixture(scope="module")
def tls_gateway(
    module_sim: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, ssl.SSLContext]]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = self_signed_cert(directory)
    config = base_config(module_sim.port)
    config["listen"]["tls"] = {"certFile": str(cert), "keyFile": str(key)}
    # healthz: connected to the Core too, which the calls below need (a 503 before that).
    with GatewayProcess(config, directory, ready="healthz") as gw:
        yield gw, client_tls(Path(cert))


async def test_https_has_hsts(tls_gateway: tuple[GatewayProcess, ssl.SSLContext]) -> None:
    gw, ctx = tls_gateway
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
        for path in ("/livez", "/healthz", "/nope"):
            async with http.get(f"{gw.url}{path}") as r:
                assert "max-age=" in r.headers["Strict-Transport-Security"]
                assert "X-Request-ID" in r.headers
        async with http.post(
            f"{gw.url}/v1/rpc",
            json={"jsonrpc": "2.0", "id": 1, "method": "StatusGet"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as r:
            assert r.status == 200
            assert (await r.json())["result"]["State"] == "Active"
            assert "Strict-Transport-Security" in r.headers


async def test_rpc_first_on_a_tls_connection_has_hsts(
    tls_gateway: tuple[GatewayProcess, ssl.SSLContext],
) -> None:
    """A connection whose first request is `/v1/rpc` (the gateway's own HTTP path)."""
    gw, ctx = tls_gateway
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
        for rid in (1, 2):
            async with http.post(
                f"{gw.url}/v1/rpc",
                json={"jsonrpc": "2.0", "id": rid, "method": "StatusGet"},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as r:
                assert r.status == 200
                assert (await r.json())["id"] == rid
                assert "max-age=" in r.headers["Strict-Transport-Security"]
                assert "Server" not in r.headers  # not aiohttp's answer


async def test_plain_http_to_tls_port_fails(
    tls_gateway: tuple[GatewayProcess, ssl.SSLContext],
) -> None:
    gw, _ = tls_gateway
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{gw.http_port}/livez") as r:
                await r.read()


async def test_wss(tls_gateway: tuple[GatewayProcess, ssl.SSLContext]) -> None:
    gw, ctx = tls_gateway
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http,
        http.ws_connect(gw.ws_url, headers={"Authorization": f"Bearer {PANEL_TOKEN}"}) as ws,
    ):
        await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "NoOp", "params": {}})
        for _ in range(5):
            msg = await ws.receive_json(timeout=10)
            if msg.get("id") == 1:
                assert msg["result"] is True
                break
        else:
            pytest.fail("no NoOp reply over WSS")


async def test_qrc_over_tls(tls_gateway: tuple[GatewayProcess, ssl.SSLContext]) -> None:
    gw, ctx = tls_gateway
    client = await QrcClient.connect("127.0.0.1", gw.qrc_port, ssl=ctx)
    try:
        await client.call("Logon", {"User": "panel", "Password": PANEL_TOKEN})
        got = await client.call("Control.Get", ["LobbyMusicOn"])
        assert got[0]["Name"] == "LobbyMusicOn"
    finally:
        await client.close()
