"""MCP bounds that hold whatever a client sends: the session cap, one request per id in
flight, a bounded SIGTERM, and streams and sessions that end with their token. Real
gateway process, simulator and raw HTTP (what the SDK client never sends)."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import mcp_types as types
import pytest
from gateway_harness import ADMIN_TOKEN, PANEL_TOKEN, GatewayFactory
from mcp.shared.exceptions import MCPError
from mcp_support import PROTOCOL, enable_mcp, mcp_session, raw_initialize, raw_post, wait_healthy

from qsys_testkit import GatewayProcess
from qsys_testkit.gateway import token_sha256

ZONE1 = "Room101 Zone1 Gain"
ZONE1_URI = "qsys://component/Room101%20Zone1%20Gain"
ROOM102 = "Room102 Zone1 Gain"

NAN_INITIALIZE = (
    b'{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {'
    b'"protocolVersion": "' + PROTOCOL.encode() + b'", '
    b'"capabilities": {"experimental": {"x": {"y": NaN}}}, '
    b'"clientInfo": {"name": "nan", "version": "1"}}}'
)


def text(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


async def start(make_gateway: GatewayFactory, port: int, **mcp: Any) -> GatewayProcess:
    gw = await asyncio.to_thread(make_gateway, port, lambda c: enable_mcp(c, **mcp))
    await wait_healthy(gw)
    return gw


async def test_session_cap_counts_whatever_the_body_said(
    module_sim_port: int, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await start(make_gateway, module_sim_port, maxSessionsPerSubject=2)
    opened: list[str] = []
    statuses: list[int] = []
    for _ in range(5):
        status, headers, _ = await raw_post(http, gw, NAN_INITIALIZE, PANEL_TOKEN)
        statuses.append(status)
        if status == 200:
            opened.append(headers["mcp-session-id"])
    assert statuses == [200, 200, 429, 429, 429], statuses
    # a session refused after the fact is gone, not merely unlisted
    for sid in opened:
        status, _, _ = await raw_post(
            http, gw, {"jsonrpc": "2.0", "method": "notifications/initialized"}, PANEL_TOKEN, sid
        )
        assert status == 202
    # the cap is the subject's: another subject still opens sessions
    await raw_initialize(http, gw, ADMIN_TOKEN)
    # ending one makes room again
    async with http.delete(
        f"{gw.url}/v1/mcp",
        headers={
            "Authorization": f"Bearer {PANEL_TOKEN}",
            "Mcp-Session-Id": opened[0],
            "MCP-Protocol-Version": PROTOCOL,
        },
    ) as r:
        assert r.status == 200
    status, _, _ = await raw_post(http, gw, NAN_INITIALIZE, PANEL_TOKEN)
    assert status == 200
    assert "Traceback" not in gw.stderr()


async def test_duplicate_id_in_flight_refused_and_sigterm_exits(
    qsys_simulator: Any, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await qsys_simulator(idle_timeout=None)
    gw = await start(make_gateway, sim.port)
    sid = await raw_initialize(http, gw, ADMIN_TOKEN)
    sim.faults.latency = 1.0
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "core_status", "arguments": {}},
    }
    results = await asyncio.gather(*(raw_post(http, gw, call, ADMIN_TOKEN, sid) for _ in range(6)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(200) == 1, statuses
    assert set(statuses) == {200, 409}, statuses
    refused = next(body for status, _, body in results if status == 409)
    assert "already in flight" in json.loads(refused)["error"]["message"]
    # once answered, the id may be used again
    status, _, _ = await raw_post(http, gw, call, ADMIN_TOKEN, sid)
    assert status == 200
    # a batch repeating an id is refused whole
    status, _, _ = await raw_post(http, gw, json.dumps([call, call]).encode(), ADMIN_TOKEN, sid)
    assert status == 409

    # SIGTERM with reused ids in flight and an open stream: exit 0 within 20 s
    streams = [asyncio.create_task(raw_post(http, gw, call, ADMIN_TOKEN, sid)) for _ in range(4)]
    get = asyncio.create_task(_get_stream(gw, sid, ADMIN_TOKEN))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    gw.terminate()
    code = await asyncio.to_thread(gw.wait, 25)
    assert code == 0
    assert time.monotonic() - started < 20
    for task in (*streams, get):
        task.cancel()
    await asyncio.gather(*streams, get, return_exceptions=True)
    assert "Traceback" not in gw.stderr()


async def _get_stream(
    gw: GatewayProcess, sid: str, token: str, opened: asyncio.Event | None = None
) -> list[bytes]:
    """Read a session's GET stream until the gateway ends it."""
    chunks: list[bytes] = []
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "text/event-stream",
        "Mcp-Session-Id": sid,
        "MCP-Protocol-Version": PROTOCOL,
    }
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(f"{gw.url}/v1/mcp", headers=headers) as r,
    ):
        assert r.status == 200, r.status
        if opened is not None:
            opened.set()
        try:
            async for chunk in r.content.iter_any():
                chunks.append(chunk)
        except aiohttp.ClientPayloadError:
            pass
    return chunks


async def test_stream_and_session_end_with_their_token(
    module_sim_port: int, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await start(make_gateway, module_sim_port)
    sid = await raw_initialize(http, gw, PANEL_TOKEN)
    subscribe = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "resources/subscribe",
        "params": {"uri": ZONE1_URI},
    }
    status, _, body = await raw_post(http, gw, subscribe, PANEL_TOKEN, sid)
    assert status == 200, body
    opened = asyncio.Event()
    stream = asyncio.create_task(_get_stream(gw, sid, PANEL_TOKEN, opened))
    async with asyncio.timeout(10):
        await opened.wait()
    await asyncio.sleep(1.5)
    assert not stream.done()

    # the panel's token is rotated without a grace period
    config = copy.deepcopy(gw.config)
    new_token = "pnl-rotated-0123456789abcdef0123456789"
    panel = config["subjects"][1]
    panel.pop("tokenHmacSha256", None)
    panel["tokenSha256"] = token_sha256(new_token)
    gw.write_config(config)
    await asyncio.to_thread(
        gw.wait_metric, "qsys_gateway_config_reloads_total", 1, 30, result="success"
    )
    ended = time.monotonic()
    async with asyncio.timeout(10):
        await stream
    assert time.monotonic() - ended < 5
    # the session ended with it: the new token cannot reach it either
    status, _, _ = await raw_post(
        http, gw, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, new_token, sid
    )
    assert status == 404
    # and its subscription's upstream session was released
    sessions = await asyncio.to_thread(gw.metric, "qsys_gateway_upstream_sessions")
    assert sessions == 0
    assert "Traceback" not in gw.stderr()


async def test_forbidden_and_missing_components_answer_alike(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    """Policy first: nothing about a component the subject may not touch (its existence,
    its controls, their types) leaks through MCP, as through /v1/rpc."""
    gw = await start(make_gateway, module_sim_port)

    def same(message: str, component: str) -> str:
        return message.replace(component, "<c>")

    async with mcp_session(gw, PANEL_TOKEN) as panel:
        answers: dict[str, list[str]] = {}
        for component in (ROOM102, "No Such Component"):
            got = []
            for values in ({"gain": "x"}, {"nosuch": 1}, {"gain": -10}):
                result = await panel.call_tool(
                    "set_controls", {"component": component, "values": values}
                )
                assert result.is_error
                got.append(same(text(result).split(" Ask an operator")[0], component))
            read = await panel.call_tool(
                "get_component", {"component": component, "controls": ["gain"]}
            )
            assert read.is_error
            got.append(same(text(read).split(" Ask an operator")[0], component))
            with pytest.raises(MCPError) as refused:
                await panel.subscribe_resource(f"qsys://component/{quote(component)}")
            got.append(same(str(refused.value.error.message).split(" Ask")[0], component))
            answers[component] = got
        assert answers[ROOM102] == answers["No Such Component"], answers
        flat = " ".join(answers[ROOM102])
        for leak in ("expects a number", "Unknown control", "Unknown component", "invert"):
            assert leak not in flat, flat
        # a control of a readable component the subject may not read: refused, not "unknown"
        hidden = await panel.call_tool(
            "get_component", {"component": ZONE1, "controls": ["invert"]}
        )
        missing = await panel.call_tool(
            "get_component", {"component": ZONE1, "controls": ["nosuch"]}
        )
        assert same(text(hidden), "invert") == same(text(missing), "nosuch")
        readable = await panel.call_tool("get_component", {"component": ZONE1})
        assert not readable.is_error, text(readable)
    # the design look-ups went through admission: counted on the mcp transport
    looked_up = await asyncio.to_thread(
        gw.metric,
        "qsys_gateway_requests_total",
        transport="mcp",
        method="Component.GetControls",
    )
    assert looked_up >= 1
    assert "Traceback" not in gw.stderr()
