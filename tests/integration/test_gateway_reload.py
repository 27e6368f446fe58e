"""Hot reload of gateway.yaml under an open WebSocket: good reloads apply, bad ones are refused."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from typing import Any

import aiohttp
from gateway_harness import ADMIN_TOKEN, PANEL_TOKEN, GatewayFactory

from qsys_protocol.config import token_hmac
from qsys_testkit import GatewayProcess


async def ws_call(ws: aiohttp.ClientWebSocketResponse, rid: int, method: str, params: Any) -> Any:
    await ws.send_json({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive_json()
            if msg.get("id") == rid and "method" not in msg:
                return msg


async def wait_metric(gw: GatewayProcess, result: str, value: float, timeout: float = 15) -> None:
    name = "qsys_gateway_config_reloads_total"
    got = await asyncio.to_thread(gw.wait_metric, name, value, timeout, result=result)
    assert got == value


KEY = b"k" * 22 + b"Zq8Lm3Tx0Wv5"


async def to_keyed(gw: GatewayProcess) -> tuple[dict[str, Any], str]:
    """Reload the harness config with the panel's hash keyed under `KEY` (a key file);
    returns that config and the panel's plain SHA-256 it replaced."""
    key_file = gw.dir / "token-key"
    key_file.write_bytes(KEY + b"\n")
    keyed = copy.deepcopy(gw.config)
    keyed["auth"] = {"tokenKeyFile": str(key_file)}
    panel = keyed["subjects"][1]
    plain: str = panel.pop("tokenSha256")
    panel["tokenHmacSha256"] = token_hmac(KEY, PANEL_TOKEN)
    gw.write_config(keyed)
    await wait_metric(gw, "success", 1)
    return keyed, plain


async def test_reload_under_open_websocket(
    module_sim_port: int, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await asyncio.to_thread(make_gateway, module_sim_port)
    headers = {"Authorization": f"Bearer {PANEL_TOKEN}"}
    async with http.ws_connect(gw.ws_url, headers=headers) as ws:
        ok = await ws_call(ws, 1, "Control.Get", ["LobbyMusicLevel"])
        assert "result" in ok
        # a good reload: the panel loses Control.Get, its open socket sees it at once
        good = copy.deepcopy(gw.config)
        good["subjects"][1]["rules"] = [
            r for r in good["subjects"][1]["rules"] if r["methods"] != ["Control.Get"]
        ]
        gw.write_config(good)
        await wait_metric(gw, "success", 1)
        denied = await ws_call(ws, 2, "Control.Get", ["LobbyMusicLevel"])
        assert denied["error"]["code"] == -32003
        # a bad reload: refused, the previous (good) config stays in force
        bad = copy.deepcopy(good)
        bad["subjects"][1]["tokenSha256"] = "not-a-hash"
        gw.write_config(bad)
        await wait_metric(gw, "failure", 1)
        assert (await ws_call(ws, 3, "NoOp", {}))["result"] is True
        assert (await ws_call(ws, 4, "Control.Get", ["LobbyMusicLevel"]))["error"]["code"] == (
            -32003
        )
        gw.write_config("core: [this is not: valid yaml")
        await wait_metric(gw, "failure", 2)
        assert not ws.closed
        assert (await ws_call(ws, 5, "NoOp", {}))["result"] is True
    assert await asyncio.to_thread(gw.metric, "qsys_gateway_config_reloads_total") == 3
    refusals = [
        line
        for line in gw.log_lines()
        if line["level"] == "ERROR" and "reload refused" in line["message"]
    ]
    assert len(refusals) == 2
    assert "tokenSha256" in refusals[0]["message"]
    async with http.post(
        f"{gw.url}/v1/rpc",
        json={"jsonrpc": "2.0", "id": 1, "method": "NoOp", "params": {}},
        headers=headers,
    ) as r:
        assert r.status == 200


async def test_reload_to_keyed_hashes_and_key_rotation(
    module_sim_port: int, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """The migration: a legacy tokenSha256 config reloads into tokenHmacSha256 under a key
    file; the same token keeps working, its plain SHA-256 no longer does, and a config
    whose key file is missing is refused with the previous one kept."""
    gw = await asyncio.to_thread(make_gateway, module_sim_port)

    async def status(token: str) -> int:
        body = {"jsonrpc": "2.0", "id": 1, "method": "NoOp", "params": {}}
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(f"{gw.url}/v1/rpc", json=body, headers=headers) as r:
            return r.status

    assert await status(PANEL_TOKEN) == 200
    keyed, plain = await to_keyed(gw)
    assert await status(PANEL_TOKEN) == 200
    assert await status(plain) == 401
    moved = copy.deepcopy(keyed)
    moved["auth"]["tokenKeyFile"] = str(gw.dir / "missing-key")
    gw.write_config(moved)
    await wait_metric(gw, "failure", 1)
    assert await status(PANEL_TOKEN) == 200
    warnings = [
        line for line in gw.log_lines() if "deprecated unkeyed tokenSha256" in line["message"]
    ]
    assert warnings


async def test_a_keep_alive_connection_is_judged_again_after_reload_and_grace(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    """/v1/rpc keeps a token's match for its connection, but a different header, a
    failed one, a reload that rotates the token and the end of a grace period all take
    effect on that same connection's next request."""
    gw = await asyncio.to_thread(make_gateway, module_sim_port)
    keyed, _ = await to_keyed(gw)

    opened: list[object] = []

    async def connected(*_: object) -> None:
        opened.append(1)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(connected)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1), trace_configs=[trace]
    ) as one:

        async def status(token: str) -> int:
            body = {"jsonrpc": "2.0", "id": 1, "method": "NoOp", "params": {}}
            headers = {"Authorization": f"Bearer {token}"}
            async with one.post(f"{gw.url}/v1/rpc", json=body, headers=headers) as r:
                await r.read()
                return r.status

        assert [await status(PANEL_TOKEN) for _ in range(3)] == [200, 200, 200]
        assert await status(PANEL_TOKEN + "x") == 401
        assert await status(PANEL_TOKEN) == 200
        new_token = "rotated-panel-token-0123456789"
        rotated = copy.deepcopy(keyed)
        rotated["subjects"][1]["tokenHmacSha256"] = token_hmac(KEY, new_token)
        gw.write_config(rotated)
        await wait_metric(gw, "success", 2)
        assert await status(PANEL_TOKEN) == 401
        assert await status(new_token) == 200
        until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
        graced = copy.deepcopy(rotated)
        graced["subjects"][1]["tokenHmacSha256"] = token_hmac(KEY, "third-panel-token-0123")
        graced["subjects"][1]["previousTokenHmacSha256"] = token_hmac(KEY, new_token)
        graced["subjects"][1]["previousTokenUntil"] = until.isoformat()
        gw.write_config(graced)
        await wait_metric(gw, "success", 3)
        assert [await status(new_token) for _ in range(2)] == [200, 200]
        await asyncio.sleep(max(0.0, (until - dt.datetime.now(dt.UTC)).total_seconds()) + 0.2)
        assert await status(new_token) == 401
    assert len(opened) == 1


async def test_a_subject_removed_by_a_reload_is_refused_401_then_429_never_admitted(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    """A policy deleted: its subject leaves the config. Its token is refused from that
    reload on: 401, and once the source has failed ten times in a minute 429 ("Too many
    failed authentications"), which a valid token never gets. So a check for "refused"
    must take 429 as a refusal: waiting for a run of 401s through a Service in front of
    pods that reload at different moments never ends (tests/e2e/test_gitops.py)."""
    gw = await asyncio.to_thread(make_gateway, module_sim_port)
    assert (await asyncio.to_thread(gw.rpc, PANEL_TOKEN, "NoOp"))[0] == 200
    without = copy.deepcopy(gw.config)
    without["subjects"] = [s for s in without["subjects"] if s["name"] != "panel"]
    gw.write_config(without)
    await wait_metric(gw, "success", 1)
    answers = [(await asyncio.to_thread(gw.rpc, PANEL_TOKEN, "NoOp"))[0] for _ in range(14)]
    assert answers == [401] * 10 + [429] * 4
    # The throttle holds the removed token only: a subject still configured is admitted.
    assert (await asyncio.to_thread(gw.rpc, ADMIN_TOKEN, "NoOp"))[0] == 200
