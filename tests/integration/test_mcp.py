"""`/v1/mcp` against the real gateway process and simulator, with the official MCP Python
SDK client (Streamable HTTP) and raw HTTP for what a well-behaved client never sends."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any

import aiohttp
import mcp_types as types
import pytest
from gateway_harness import (
    ADMIN_TOKEN,
    NORULES_TOKEN,
    PANEL_TOKEN,
    SLOW_TOKEN,
    GatewayFactory,
    assert_no_tokens,
)
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated
from mcp_support import (
    INITIALIZE,
    enable_mcp,
    mcp_client,
    mcp_session,
    raw_initialize,
    raw_post,
    sse_messages,
    wait_healthy,
)

from qsys_testkit import GatewayProcess

ZONE1 = "Room101 Zone1 Gain"
ZONE1_URI = "qsys://component/Room101%20Zone1%20Gain"
ROOM102 = "Room102 Zone1 Gain"


def _gateway(make_gateway: GatewayFactory, port: int, **mcp: Any) -> GatewayProcess:
    return make_gateway(port, lambda c: enable_mcp(c, **mcp))


async def start(make_gateway: GatewayFactory, port: int, **mcp: Any) -> GatewayProcess:
    """A gateway with MCP on, once its upstream is up (/readyz only says it listens)."""
    gw = await asyncio.to_thread(_gateway, make_gateway, port, **mcp)
    await wait_healthy(gw)
    return gw


def tool_map(result: types.ListToolsResult) -> dict[str, types.Tool]:
    return {t.name: t for t in result.tools}


def set_variants(tool: types.Tool) -> dict[str, dict[str, Any]]:
    """component -> its `values` properties in set_controls' schema."""
    return {
        v["properties"]["component"]["const"]: v["properties"]["values"]["properties"]
        for v in tool.input_schema["oneOf"]
        if "const" in v["properties"]["component"]
    }


def text(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


async def audit_where(
    gw: GatewayProcess, pred: Any, count: int = 1, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """The audit lines matching `pred`, once there are at least `count` (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [a for a in gw.audit_lines() if pred(a)]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.1)


async def test_tools_differ_by_subject_with_effective_ranges(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = await start(make_gateway, module_sim_port)
    async with mcp_session(gw, ADMIN_TOKEN) as admin:
        admin_tools = tool_map(await admin.list_tools())
    async with mcp_session(gw, PANEL_TOKEN) as panel:
        panel_tools = tool_map(await panel.list_tools())
    async with mcp_session(gw, NORULES_TOKEN) as nobody:
        assert (await nobody.list_tools()).tools == []
    async with mcp_session(gw, SLOW_TOKEN) as slow:  # StatusGet and Control.* only
        assert set(tool_map(await slow.list_tools())) == {"core_status"}
    assert set(admin_tools) == {
        "core_status",
        "list_components",
        "get_component",
        "set_controls",
        "load_snapshot",
    }
    assert set(panel_tools) == set(admin_tools)
    admin_set = set_variants(admin_tools["set_controls"])
    panel_set = set_variants(panel_tools["set_controls"])
    # the Core's range for admin, intersected with the rule's valueRange for the panel
    assert admin_set[ZONE1]["gain"]["minimum"] == -100
    assert admin_set[ZONE1]["gain"]["maximum"] == 20
    assert panel_set[ZONE1]["gain"]["minimum"] == -60
    assert panel_set[ZONE1]["gain"]["maximum"] == 0
    assert "dB" in panel_set[ZONE1]["gain"]["description"]
    assert panel_set[ZONE1]["mute"]["type"] == "boolean"
    # only the components and controls the rule names
    assert set(panel_set) == {"Room101 Zone1 Gain", "Room101 Zone2 Gain"}
    assert set(panel_set[ZONE1]) == {"gain", "mute"}
    assert ROOM102 in admin_set
    assert "invert" in admin_set[ZONE1]
    assert panel_tools["load_snapshot"].input_schema["properties"]["name"]["enum"] == [
        "Room Presets"
    ]


async def test_read_write_and_refusals_with_audit(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = await start(make_gateway, module_sim_port)
    async with mcp_session(gw, PANEL_TOKEN) as panel:
        listed = await panel.call_tool("list_components", {"filter": "room101*"})
        assert not listed.is_error
        names = [c["name"] for c in (listed.structured_content or {})["components"]]
        assert names == ["Room101 Zone1 Gain", "Room101 Zone2 Gain"]

        ok = await panel.call_tool("set_controls", {"component": ZONE1, "values": {"gain": -33}})
        assert not ok.is_error, text(ok)
        got = await panel.call_tool("get_component", {"component": ZONE1})
        controls = (got.structured_content or {})["controls"]
        assert controls["gain"]["value"] == -33
        assert controls["gain"]["allowedRange"] == [-60, 0]
        assert set(controls) == {"gain", "mute"}  # "invert" is not readable

        high = await panel.call_tool("set_controls", {"component": ZONE1, "values": {"gain": 6}})
        assert high.is_error
        assert "outside your allowed range -60..0 dB" in text(high)
        assert (high.structured_content or {})["error"] == "denied"

        other = await panel.call_tool(
            "set_controls", {"component": ROOM102, "values": {"gain": -10}}
        )
        assert other.is_error
        message = text(other)
        assert f"no rule allows {ROOM102}.gain" in message
        assert "methods [Component.Set]" in message
        assert "Traceback" not in message

        hidden = await panel.call_tool("get_component", {"component": ROOM102})
        assert hidden.is_error
        assert "no rule allows" in text(hidden)

    writes = await audit_where(
        gw, lambda a: a["transport"] == "mcp" and a["method"] == "Component.Set", count=3
    )
    by_outcome = {(a["decision"], tuple(a["targets"])): a for a in writes}
    assert ("allow", (f"{ZONE1}.gain",)) in by_outcome
    denied_range = by_outcome[("deny", (f"{ZONE1}.gain",))]
    assert denied_range["values"] == [6]
    assert denied_range["subject"] == "panel"
    assert ("deny", (f"{ROOM102}.gain",)) in by_outcome
    assert all(a["requestId"] for a in writes)
    counted = {
        outcome: await asyncio.to_thread(
            gw.metric,
            "qsys_gateway_requests_total",
            transport="mcp",
            method="Component.Set",
            outcome=outcome,
        )
        for outcome in ("ok", "denied")
    }
    assert counted == {"ok": 1, "denied": 2}
    assert_no_tokens(gw.stdout(), gw.stderr())


@pytest.mark.filterwarnings("ignore:resources/subscribe is removed")
async def test_subscription_notified_when_another_client_writes(
    module_sim_port: int, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await start(make_gateway, module_sim_port)
    updated: asyncio.Queue[str] = asyncio.Queue()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            await updated.put(str(message.params.uri))

    async with mcp_session(gw, PANEL_TOKEN, on_message) as panel:
        resources = await panel.list_resources()
        assert ZONE1_URI in [str(r.uri) for r in resources.resources]
        read = await panel.read_resource(ZONE1_URI)
        first = read.contents[0]
        assert isinstance(first, types.TextResourceContents)
        assert set(json.loads(first.text)["controls"]) == {"gain", "mute"}
        await panel.subscribe_resource(ZONE1_URI)
        with pytest.raises(MCPError, match="no rule allows"):
            await panel.subscribe_resource("qsys://component/Room102%20Zone1%20Gain")
        await asyncio.sleep(0.5)
        while not updated.empty():
            updated.get_nowait()
        await rpc_set_gain(http, gw, -41)
        async with asyncio.timeout(10):
            assert await updated.get() == ZONE1_URI
        again = await panel.read_resource(ZONE1_URI)
        block = again.contents[0]
        assert isinstance(block, types.TextResourceContents)
        assert json.loads(block.text)["controls"]["gain"]["value"] == -41


async def rpc_set_gain(http: aiohttp.ClientSession, gw: GatewayProcess, value: float) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "Component.Set",
        "params": {"Name": ZONE1, "Controls": [{"Name": "gain", "Value": value}]},
    }
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.post(f"{gw.url}/v1/rpc", json=body, headers=headers) as r:
        assert r.status == 200


async def test_current_protocol_tools_and_listen(
    module_sim_port: int, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """The 2026-07-28 revision (no session; `subscriptions/listen` streams)."""
    gw = await start(make_gateway, module_sim_port)
    async with mcp_client(gw, PANEL_TOKEN) as client:
        assert client.protocol_version == "2026-07-28"
        assert "set_controls" in tool_map(await client.list_tools())
        ok = await client.call_tool("set_controls", {"component": ZONE1, "values": {"gain": -12}})
        assert not ok.is_error, text(ok)
        with pytest.raises(MCPError, match="no rule allows"):
            async with client.listen(resource_subscriptions=[f"qsys://component/{ROOM102}"]):
                pass
        async with client.listen(resource_subscriptions=[ZONE1_URI]) as sub:
            await asyncio.sleep(0.5)
            await rpc_set_gain(http, gw, -44)
            async with asyncio.timeout(10):
                async for event in sub:
                    assert isinstance(event, ResourceUpdated)
                    assert event.uri == ZONE1_URI
                    break
    audited = await audit_where(
        gw, lambda a: a["transport"] == "mcp" and a["method"] == "Component.Set"
    )
    assert [a["decision"] for a in audited] == ["allow"]


async def test_rate_limited_call_says_when_to_retry(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = await start(make_gateway, module_sim_port)
    async with mcp_session(gw, SLOW_TOKEN) as slow:
        assert set(tool_map(await slow.list_tools())) == {"core_status"}
        results = [await slow.call_tool("core_status", {}) for _ in range(5)]
    assert not results[0].is_error
    limited = [r for r in results if r.is_error]
    assert limited, "a subject allowed 2 calls/s made 5 at once"
    data = limited[0].structured_content or {}
    assert data["error"] == "rate_limited"
    assert 0 < data["retryAfterSeconds"] <= 1
    assert "retry in" in text(limited[0])
    audited = await audit_where(
        gw, lambda a: a["transport"] == "mcp" and a["outcome"] == "rate_limited"
    )
    assert audited
    assert audited[0]["reason"] == "rate limit exceeded"


async def test_reconnect_with_session_id_after_config_reload(
    module_sim_port: int, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await start(make_gateway, module_sim_port)
    sid = await raw_initialize(http, gw, PANEL_TOKEN)
    listed = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    status, _, body = await raw_post(http, gw, listed, PANEL_TOKEN, sid)
    assert status == 200
    reply = sse_messages(body)[0]
    assert "result" in reply, reply
    before = reply["result"]["tools"]
    assert "set_controls" in [t["name"] for t in before]

    # the panel loses its write rules; the same session continues under the new rules
    config = copy.deepcopy(gw.config)
    config["subjects"][1]["rules"] = [
        r for r in config["subjects"][1]["rules"] if "Component.Set" not in r["methods"]
    ]
    config["subjects"][1]["rules"].append({"methods": ["Component.Get"], "components": ["*"]})
    gw.write_config(config)
    await wait_reloads(gw, 1)
    status, _, body = await raw_post(http, gw, {**listed, "id": 3}, PANEL_TOKEN, sid)
    assert status == 200
    after = [t["name"] for t in sse_messages(body)[0]["result"]["tools"]]
    assert "set_controls" not in after
    assert "get_component" in after
    # another subject cannot use the session id
    status, _, _ = await raw_post(http, gw, {**listed, "id": 4}, ADMIN_TOKEN, sid)
    assert status == 404


async def test_authentication_and_bad_input_never_500(
    module_sim_port: int, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await start(make_gateway, module_sim_port, maxSessionsPerSubject=2)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    for token in (None, "wrong-token"):
        status, headers, body = await raw_post(http, gw, init, token)
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert json.loads(body)["error"]["code"] == -32001

    status, _, body = await raw_post(http, gw, b'{"jsonrpc": "2.0", "id": 1, "meth', PANEL_TOKEN)
    assert status == 400
    assert json.loads(body)["error"]["code"] == -32700

    status, _, body = await raw_post(http, gw, b"x" * 70000, PANEL_TOKEN)
    assert status == 413
    assert "over 65536 bytes" in json.loads(body)["error"]["message"]

    async with http.put(
        f"{gw.url}/v1/mcp", headers={"Authorization": f"Bearer {PANEL_TOKEN}"}
    ) as r:
        assert r.status == 405

    sid = await raw_initialize(http, gw, PANEL_TOKEN)
    status, _, body = await raw_post(
        http, gw, {"jsonrpc": "2.0", "id": 2, "method": "no/such"}, PANEL_TOKEN, sid
    )
    assert status == 200
    assert sse_messages(body)[0]["error"]["code"] == -32601
    status, _, body = await raw_post(
        http, gw, {"jsonrpc": "2.0", "id": 3, "method": "tools/call"}, PANEL_TOKEN, sid
    )
    assert status == 200
    assert sse_messages(body)[0]["error"]["code"] == -32602

    async with mcp_session(gw, PANEL_TOKEN) as panel:
        with pytest.raises(MCPError, match="Unknown tool"):
            await panel.call_tool("drop_tables", {})
        wrong = await panel.call_tool("set_controls", {"component": ZONE1, "values": "loud"})
        assert wrong.is_error
        assert "Invalid arguments: values" in text(wrong)
        typed = await panel.call_tool("set_controls", {"component": ZONE1, "values": {"gain": "x"}})
        assert typed.is_error
        assert "gain: expects a number in dB" in text(typed)
        unknown = await panel.call_tool("get_component", {"component": "No Such Thing"})
        assert unknown.is_error
        assert "no rule allows" in text(unknown)
        with pytest.raises(MCPError, match="Unknown resource"):
            await panel.read_resource("file:///etc/passwd")

    # per-subject session bound: two open, the third is refused until one ends
    await raw_initialize(http, gw, PANEL_TOKEN)
    status, headers, body = await raw_post(http, gw, INITIALIZE, PANEL_TOKEN)
    assert status == 429
    assert "Too many MCP sessions" in json.loads(body)["error"]["message"]
    assert headers["Retry-After"]
    assert "Traceback" not in gw.stderr()
    assert_no_tokens(gw.stdout(), gw.stderr())


async def wait_reloads(gw: GatewayProcess, count: int) -> None:
    name = "qsys_gateway_config_reloads_total"
    await asyncio.to_thread(gw.wait_metric, name, count, 30, result="success")


async def test_off_by_default_and_switched_on_by_a_reload(
    module_sim_port: int, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await asyncio.to_thread(make_gateway, module_sim_port)
    await wait_healthy(gw)
    status, _, _ = await raw_post(http, gw, INITIALIZE, PANEL_TOKEN)
    assert status == 404
    config = copy.deepcopy(gw.config)
    enable_mcp(config)
    gw.write_config(config)
    await wait_reloads(gw, 1)
    async with mcp_session(gw, PANEL_TOKEN) as panel:
        assert "get_component" in tool_map(await panel.list_tools())
