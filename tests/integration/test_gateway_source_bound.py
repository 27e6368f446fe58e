"""Legacy raw QRC clients that never Logon: a subject bound to source addresses (sourceCIDRs).

Clients bind distinct loopback addresses (127.0.0.2 inside the subject's CIDR,
127.0.0.3 outside it) to connect to the real gateway's QRC port.
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import aiohttp
from gateway_harness import ADMIN_TOKEN, GatewayFactory

from qsys_protocol.qrc.client import QrcClient
from qsys_testkit import GatewayProcess

ZONE = "Room101 Zone1 Gain"
LEGACY: dict[str, Any] = {
    "name": "legacy-dsp",
    "sourceCIDRs": ["127.0.0.2/32"],
    "rules": [
        {"methods": ["NoOp", "StatusGet"]},
        {"methods": ["Component.Get", "Component.Set"], "components": [ZONE]},
    ],
}


def with_legacy(config: dict[str, Any]) -> None:
    config["subjects"].append(copy.deepcopy(LEGACY))


async def connect_from(gw: GatewayProcess, source: str) -> QrcClient:
    return await QrcClient.connect("127.0.0.1", gw.qrc_port, local_addr=(source, 0))


def get_gain() -> dict[str, Any]:
    return {"Name": ZONE, "Controls": [{"Name": "gain"}]}


async def test_admitted_from_its_cidr_refused_from_another(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = await asyncio.to_thread(make_gateway, module_sim_port, with_legacy)
    inside = await connect_from(gw, "127.0.0.2")
    outside = await connect_from(gw, "127.0.0.3")
    try:
        # No Logon: the peer address names the subject.
        got = await inside.call("Component.Get", get_gain())
        assert got["Controls"][0]["Name"] == "gain"
        written = await inside.request(
            "Component.Set", {"Name": ZONE, "Controls": [{"Name": "gain", "Value": -7}]}
        )
        assert written.result is True
        # The subject's own rules still apply.
        denied = await inside.request("Control.Get", ["LobbyMusicLevel"])
        assert denied.error is not None
        assert denied.error["code"] == -32003
        # Any other address is a client that has not logged on (error 10), as before.
        refused = await outside.request("Component.Get", get_gain())
        assert refused.error is not None
        assert refused.error["code"] == 10
        assert (await outside.request("NoOp", {})).result is True
    finally:
        await inside.close()
        await outside.close()
    audit = gw.audit_lines()
    admitted = [a for a in audit if a["method"] == "Logon" and a["subject"] == "legacy-dsp"]
    assert len(admitted) == 1
    assert admitted[0]["sourceIp"] == "127.0.0.2"
    assert admitted[0]["decision"] == "allow"
    assert admitted[0]["transport"] == "qrc"
    writes = [a for a in audit if a["method"] == "Component.Set"]
    assert [(a["subject"], a["sourceIp"], a["decision"]) for a in writes] == [
        ("legacy-dsp", "127.0.0.2", "allow")
    ]
    assert not [a for a in audit if a["sourceIp"] == "127.0.0.3" and a["subject"] != "-"]


async def test_logon_keeps_its_token_subject(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    """A client inside the CIDR that does log on is its token's subject, not the bound one."""
    gw = await asyncio.to_thread(make_gateway, module_sim_port, with_legacy)
    client = await connect_from(gw, "127.0.0.2")
    try:
        assert (await client.request("Logon", {"User": "admin", "Password": ADMIN_TOKEN})).result
        got = await client.call("Control.Get", ["LobbyMusicLevel"])
        assert got[0]["Name"] == "LobbyMusicLevel"
    finally:
        await client.close()


async def test_source_binding_is_raw_qrc_only(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = await asyncio.to_thread(make_gateway, module_sim_port, with_legacy)
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    body = {"jsonrpc": "2.0", "id": 1, "method": "Component.Get", "params": get_gain()}
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post(f"{gw.url}/v1/rpc", json=body) as r:
            assert r.status == 401
        async with http.ws_connect(gw.ws_url) as ws:
            await ws.send_json(body)
            while True:
                msg = await ws.receive_json(timeout=10)
                if msg.get("id") == 1:
                    break
            assert msg["error"]["code"] == -32001


async def test_reload_that_drops_the_cidr_refuses_the_open_connection(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = await asyncio.to_thread(make_gateway, module_sim_port, with_legacy)
    client = await connect_from(gw, "127.0.0.2")
    try:
        assert (await client.call("Component.Get", get_gain()))["Name"] == ZONE
        moved = copy.deepcopy(gw.config)
        moved["subjects"][-1]["sourceCIDRs"] = ["127.0.0.4/32"]
        gw.write_config(moved)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            resp = await client.request("Component.Get", get_gain())
            if resp.error is not None:
                assert resp.error["code"] == -32001
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the connection kept its subject after its CIDR was removed")
    finally:
        await client.close()


async def test_address_admission_is_a_logon_without_deadline(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    """A control system that sends only NoOp, or nothing, between button presses keeps
    its socket past the logon deadline, as on a Core, and counts as logged on."""

    def edit(config: dict[str, Any]) -> None:
        config["subjects"].append(copy.deepcopy(LEGACY))
        config["limits"]["logonTimeoutSeconds"] = 1

    gw = await asyncio.to_thread(make_gateway, module_sim_port, edit)
    silent = await connect_from(gw, "127.0.0.2")  # sends nothing at all
    noop_only = await connect_from(gw, "127.0.0.2")  # NoOp between button presses
    outside = await connect_from(gw, "127.0.0.3")  # no Logon, no address binding
    try:
        for _ in range(8):  # 4 s, four logon deadlines
            assert await noop_only.call("NoOp", {}) is True
            await asyncio.sleep(0.5)
        assert not silent.closed.is_set()
        assert not noop_only.closed.is_set()
        # a button press after all that
        pressed = await noop_only.call(
            "Component.Set", {"Name": ZONE, "Controls": [{"Name": "mute", "Value": 1}]}
        )
        assert pressed is True
        got = await silent.call("Component.Get", {"Name": ZONE, "Controls": [{"Name": "mute"}]})
        assert got["Controls"][0]["Value"] == 1
        # the deadline still holds for everyone else
        await asyncio.wait_for(outside.closed.wait(), 5)
    finally:
        for client in (silent, noop_only, outside):
            await client.close()
    # unproven connections are not what they are counted as
    assert gw.metric("qsys_gateway_unauthenticated_clients") == 0
