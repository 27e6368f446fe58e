"""Other people's Core clients through the real gateway: what they send and what they are
owed, as a Core would answer them.

- unknown members of params (a whole control state, as the vendor SDK's
  `control.update(other.state)` sends) are dropped, only validated fields forwarded;
- a Logon with a misspelt member is -32602 naming `Password`, and is no failed logon.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from gateway_harness import ADMIN_TOKEN, PANEL_TOKEN, GatewayFactory

from qsys_core_sim.server import CoreSimulator
from qsys_protocol.qrc.client import QrcClient

pytestmark = pytest.mark.timeout(90)

ZONE = "Room101 Zone1 Gain"


async def test_a_whole_control_state_is_accepted_and_only_known_fields_forwarded(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """The vendor SDK's README: `control.update(other.state)` sends Type, ValueMin, ...
    A Core ignores what it does not know; so do the gateway and the simulator."""
    async with CoreSimulator(idle_timeout=None) as sim:
        gw = await asyncio.to_thread(make_gateway, sim.port)
        seen: list[Any] = []
        original = sim.engine.call

        def spy(session: Any, method: str, params: Any) -> Any:
            seen.append((method, params.model_dump(mode="json", exclude_none=True)))
            return original(session, method, params)

        sim.engine.call = spy  # type: ignore[method-assign]
        client = await QrcClient.connect("127.0.0.1", gw.qrc_port)
        try:
            assert await client.call("Logon", {"User": "admin", "Password": ADMIN_TOKEN})
            controls = await client.call("Component.GetControls", {"Name": ZONE})
            gain = next(c for c in controls["Controls"] if c["Name"] == "gain")
            state = {**gain, "Value": -12, "Bool": False, "Secret": "x" * 100}
            state.pop("String")
            state.pop("Position")
            result = await client.call(
                "Component.Set",
                {"Name": ZONE, "Controls": [state], "ResponseValues": True, "Origin": 1},
            )
            assert [(c["Name"], c["Value"]) for c in result] == [("gain", -12.0)]
            assert await client.call("Control.Set", {"Name": "MainGain", "Value": -3, "Type": 1})
            # strict where it protects: types and sizes of known fields
            bad = await client.request(
                "Component.Set", {"Name": ZONE, "Controls": [{**state, "Value": [1]}]}
            )
            assert bad.error is not None
            assert bad.error["code"] == -32602
            big = await client.request("Control.Set", {"Name": "N" * 300, "Value": 1, "X": 1})
            assert big.error is not None
            assert big.error["code"] == -32602
        finally:
            await client.close()
        writes = [p for m, p in seen if m == "Component.Set"]
        assert writes == [
            {"Name": ZONE, "Controls": [{"Name": "gain", "Value": -12}], "ResponseValues": True}
        ]
        assert [p for m, p in seen if m == "Control.Set"] == [{"Name": "MainGain", "Value": -3}]
        # the same over HTTP and the WebSocket
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        params: dict[str, Any] = {"Name": "MainGain", "Value": -4, "ValueMin": -100, "X": "x"}
        call = {"jsonrpc": "2.0", "id": 1, "method": "Control.Set", "params": params}
        async with http.post(f"{gw.url}/v1/rpc", json=call, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        async with http.ws_connect(gw.ws_url, headers=headers) as ws:
            await ws.send_json({**call, "id": 2, "params": {**params, "Value": -5}})
            async with asyncio.timeout(10):
                while (reply := await ws.receive_json()).get("id") != 2:
                    pass
            assert "result" in reply, reply
        assert [p for m, p in seen if m == "Control.Set"][-2:] == [
            {"Name": "MainGain", "Value": -4},
            {"Name": "MainGain", "Value": -5},
        ]


async def test_misspelt_logon_member_is_invalid_params_not_a_failed_logon(
    make_gateway: GatewayFactory, module_sim_port: int, http: aiohttp.ClientSession
) -> None:
    gw = await asyncio.to_thread(make_gateway, module_sim_port)
    # far more than the failed-logon throttle allows (10), from one address
    for _i in range(15):
        client = await QrcClient.connect("127.0.0.1", gw.qrc_port, local_addr=("127.0.0.44", 0))
        try:
            resp = await client.request("Logon", {"User": "panel", "Pin": PANEL_TOKEN})
            assert resp.error is not None
            assert resp.error["code"] == -32602, resp.error
            assert "Password" in resp.error["message"]
            assert PANEL_TOKEN not in resp.error["message"]
            wrong_type = await client.request("Logon", {"User": "panel", "Password": 1234})
            assert wrong_type.error is not None
            assert wrong_type.error["code"] == -32602
        finally:
            await client.close()
    # the address is not throttled: the right token logs on at once
    client = await QrcClient.connect("127.0.0.1", gw.qrc_port, local_addr=("127.0.0.44", 0))
    try:
        assert await client.call("Logon", {"User": "panel", "Password": PANEL_TOKEN}) is True
        # a second Logon with a misspelt member on a logged-on socket: -32602 too
        again = await client.request("Logon", {"User": "panel", "Pasword": PANEL_TOKEN})
        assert again.error is not None
        assert again.error["code"] == -32602
    finally:
        await client.close()
    # the WebSocket's first Logon too
    async with http.ws_connect(gw.ws_url) as ws:
        await ws.send_json(
            {"jsonrpc": "2.0", "id": 1, "method": "Logon", "params": {"User": "panel", "Pin": 1}}
        )
        async with asyncio.timeout(10):
            while (reply := await ws.receive_json()).get("id") != 1:
                pass
        assert reply["error"]["code"] == -32602
    assert gw.metric("qsys_gateway_auth_failures_total", transport="qrc") == 0
    assert [a for a in gw.audit_lines() if a["method"] == "Logon"] == []
