"""`Component.GetComponents` lists only the components the subject may read, on every
transport (HTTP, /v1/ws, QRWC, raw QRC, the MCP `list_components` tool), answered by
the real simulator through the real gateway."""

from __future__ import annotations

import asyncio
import copy
from fnmatch import fnmatchcase
from typing import Any

import aiohttp
from gateway_harness import ADMIN_TOKEN, PANEL_TOKEN, GatewayFactory
from mcp_support import enable_mcp, mcp_session

from qsys_protocol.qrc.client import QrcClient
from qsys_testkit import LOOPBACK, GatewayProcess

LIST = "Component.GetComponents"


def listing_allowed(config: dict[str, Any]) -> None:
    """The panel (Component.Get on `Room101 Zone*`) may also list the design."""
    panel = next(s for s in config["subjects"] if s["name"] == "panel")
    panel["rules"][0]["methods"].append(LIST)
    enable_mcp(config)


async def over_ws(gw: GatewayProcess, path: str, token: str) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"ws://{LOOPBACK}:{gw.http_port}{path}", headers=headers) as ws,
    ):
        await ws.send_json({"jsonrpc": "2.0", "id": 5, "method": LIST, "params": {}})
        async with asyncio.timeout(10):
            while True:
                msg = await ws.receive_json()
                if msg.get("id") == 5:
                    result: list[dict[str, Any]] = msg["result"]
                    return result


async def over_qrc(gw: GatewayProcess, user: str, token: str) -> list[dict[str, Any]]:
    qrc = await QrcClient.connect(LOOPBACK, gw.qrc_port)
    try:
        assert await qrc.call("Logon", {"User": user, "Password": token}) is True
        result: list[dict[str, Any]] = await qrc.call(LIST, {})
        return result
    finally:
        await qrc.close()


async def over_mcp(gw: GatewayProcess, token: str) -> list[str]:
    async with mcp_session(gw, token) as session:
        listed = await session.call_tool("list_components", {"limit": 200})
        assert not listed.is_error
        return [c["name"] for c in (listed.structured_content or {})["components"]]


def names(components: list[dict[str, Any]]) -> list[str]:
    return sorted(c["Name"] for c in components)


async def test_every_transport_lists_only_readable_components(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = await asyncio.to_thread(make_gateway, module_sim_port, listing_allowed)
    code, everything = await asyncio.to_thread(gw.rpc, ADMIN_TOKEN, LIST)
    assert code == 200, everything
    design = names(everything["result"])
    readable = [n for n in design if fnmatchcase(n, "Room101 Zone*")]
    assert readable, design
    assert len(readable) < len(design), design

    code, http = await asyncio.to_thread(gw.rpc, PANEL_TOKEN, LIST)
    assert code == 200, http
    assert names(http["result"]) == readable
    # The listed entries are the Core's own, whole (type, properties).
    full = {c["Name"]: c for c in everything["result"]}
    assert all(c == full[c["Name"]] for c in http["result"])
    assert names(await over_ws(gw, "/v1/ws", PANEL_TOKEN)) == readable
    assert names(await over_ws(gw, "/qrc-public-api/v0", PANEL_TOKEN)) == readable
    assert names(await over_qrc(gw, "panel", PANEL_TOKEN)) == readable
    assert sorted(await over_mcp(gw, PANEL_TOKEN)) == readable
    # A subject whose rules name every component sees the whole design everywhere.
    assert names(await over_ws(gw, "/qrc-public-api/v0", ADMIN_TOKEN)) == design
    assert names(await over_qrc(gw, "admin", ADMIN_TOKEN)) == design
    assert sorted(await over_mcp(gw, ADMIN_TOKEN)) == design


async def test_listing_follows_a_policy_reload(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = await asyncio.to_thread(make_gateway, module_sim_port, listing_allowed)
    config = copy.deepcopy(gw.config)
    panel = next(s for s in config["subjects"] if s["name"] == "panel")
    panel["rules"].append({"methods": ["Component.GetControls"], "components": ["Room102*"]})
    ws_before = await over_ws(gw, "/v1/ws", PANEL_TOKEN)
    assert not [c for c in ws_before if c["Name"].startswith("Room102")]
    gw.write_config(config)

    async def widened() -> list[str]:
        while True:
            listed = names(await over_qrc(gw, "panel", PANEL_TOKEN))
            if any(n.startswith("Room102") for n in listed):
                return listed
            await asyncio.sleep(0.2)

    listed = await asyncio.wait_for(widened(), 20)
    assert all(fnmatchcase(n, "Room101 Zone*") or n.startswith("Room102") for n in listed)
