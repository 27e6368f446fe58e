"""WebSocket transport of the real gateway: header token, first-message Logon, pushes, bad input."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from gateway_harness import ADMIN_TOKEN, PANEL_TOKEN

from qsys_testkit import GatewayProcess


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> Any:
    msg = await ws.receive(timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def reply(ws: aiohttp.ClientWebSocketResponse, rid: Any, timeout: float = 10.0) -> Any:
    """The response with id `rid`, skipping pushed notifications."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await recv(ws, timeout)
            if isinstance(msg, list) or ("method" not in msg and msg.get("id") == rid):
                return msg


async def notification(
    ws: aiohttp.ClientWebSocketResponse, method: str, timeout: float = 10.0
) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            msg = await recv(ws, timeout)
            if isinstance(msg, dict) and msg.get("method") == method:
                return msg


def call(method: str, params: Any = None, rid: int = 1) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


async def test_header_token(shared_gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {PANEL_TOKEN}"}
    async with http.ws_connect(shared_gateway.ws_url, headers=headers) as ws:
        status = await notification(ws, "EngineStatus")
        assert status["params"]["State"] == "Active"
        await ws.send_json(call("NoOp", {}, 7))
        assert (await reply(ws, 7))["result"] is True
        await ws.send_json(call("Snapshot.Save", {"Name": "Room Presets", "Bank": 1}, 8))
        assert (await reply(ws, 8))["error"]["code"] == -32003


async def test_bad_header_token_is_refused_at_handshake(shared_gateway: GatewayProcess) -> None:
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.31", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.get(
            shared_gateway.ws_url.replace("ws://", "http://"),
            headers={
                "Authorization": "Bearer wrong",
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            },
        ) as r,
    ):
        assert r.status == 401
        assert (await r.json())["error"]["code"] == -32001
        assert "X-Request-ID" in r.headers


async def test_first_message_logon(shared_gateway: GatewayProcess) -> None:
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.32", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.ws_connect(shared_gateway.ws_url) as ws,
    ):
        await ws.send_json(call("StatusGet", None, 1))
        assert (await reply(ws, 1))["error"]["code"] == -32001
        await ws.send_json(call("Logon", {"User": "admin", "Password": PANEL_TOKEN}, 2))
        assert (await reply(ws, 2))["error"]["code"] == -32001
        await ws.send_json(call("Logon", {"User": "panel", "Password": PANEL_TOKEN}, 3))
        assert (await reply(ws, 3))["result"] is True
        await ws.send_json(call("Control.Get", ["LobbyMusicLevel"], 4))
        assert (await reply(ws, 4))["result"][0]["Name"] == "LobbyMusicLevel"


async def test_bad_input_on_websocket(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.ws_connect(shared_gateway.ws_url, headers=headers) as ws:
        await ws.send_str("{not json")
        assert (await reply(ws, None))["error"]["code"] == -32700
        await ws.send_str("[" * 5000 + "]" * 5000)
        assert (await reply(ws, None))["error"]["code"] in (-32700, -32600)
        await ws.send_json(call("Component.Set", {"Name": 1}, 5))
        assert (await reply(ws, 5))["error"]["code"] == -32602
        await ws.send_json([call("NoOp", {}, 10), call("Snapshot.Bogus", {}, 11)])
        got: dict[int, Any] = {}
        async with asyncio.timeout(10):
            while len(got) < 2:
                msg = await recv(ws)
                if "method" not in msg:
                    got[msg["id"]] = msg
        assert got[10]["result"] is True
        assert got[11]["error"]["code"] == -32601  # not modelled, named by no rule
        await ws.send_json(call("NoOp", {}, 6))
        assert (await reply(ws, 6))["result"] is True
        # a frame over maxMessageBytes closes the socket (1009), never crashes the gateway
        await ws.send_str(json.dumps(call("NoOp", {"pad": "z" * 70000}, 9)))
        msg = await ws.receive(10)
        while msg.type == aiohttp.WSMsgType.TEXT:
            msg = await ws.receive(10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1009
    async with http.get(f"{shared_gateway.url}/readyz") as r:
        assert r.status == 200


async def test_autopoll_is_pushed(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"Bearer {PANEL_TOKEN}"}
    async with http.ws_connect(shared_gateway.ws_url, headers=headers) as ws:
        add = {
            "Id": "1",
            "Component": {"Name": "Room101 Zone2 Gain", "Controls": [{"Name": "gain"}]},
        }
        await ws.send_json(call("ChangeGroup.AddComponentControl", add, 1))
        assert (await reply(ws, 1))["result"] is True
        await ws.send_json(call("ChangeGroup.AutoPoll", {"Id": "1", "Rate": 0.1}, 2))
        assert (await reply(ws, 2))["result"] is True
        first = await notification(ws, "ChangeGroup.Poll")
        assert first["params"]["Id"] == "1"
        value = -33.0
        body = call(
            "Component.Set",
            {"Name": "Room101 Zone2 Gain", "Controls": [{"Name": "gain", "Value": value}]},
        )
        async with http.post(
            f"{shared_gateway.url}/v1/rpc",
            json=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as r:
            assert r.status == 200
        async with asyncio.timeout(10):
            while True:
                push = await notification(ws, "ChangeGroup.Poll")
                changes = push["params"]["Changes"]
                if any(c.get("Value") == value for c in changes):
                    break
