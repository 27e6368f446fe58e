"""QrcClient against the simulator: correlation, pipelining, pushes, errors, close."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from qsys_core_sim.server import CoreSimulator
from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.client import ConnectionClosed, QrcClient
from qsys_protocol.qrc.errors import ErrorCode, QrcError

pytestmark = pytest.mark.timeout(30)


async def test_pipelined_requests_are_correlated(qrc_client: QrcClient) -> None:
    names = ["MainGain", "MainMute", "LobbyMusicLevel", "LobbyMusicOn", "WelcomeText"] * 40
    results = await asyncio.gather(*(qrc_client.call("Control.Get", [n]) for n in names))
    assert [r[0]["Name"] for r in results] == names


async def test_error_responses(qrc_client: QrcClient) -> None:
    resp = await qrc_client.request("Control.Get", ["Nope"])
    assert resp.is_error
    assert resp.error is not None
    assert resp.error["code"] == ErrorCode.UNKNOWN_CONTROL
    with pytest.raises(QrcError) as info:
        await qrc_client.call("Control.Get", ["Nope"])
    assert info.value.code == ErrorCode.UNKNOWN_CONTROL


async def test_on_notification_callback(sim: CoreSimulator, make_client: Any) -> None:
    seen: list[jsonrpc.Request] = []
    client: QrcClient = await make_client(sim.port, on_notification=seen.append)
    await client.call("NoOp", {})
    assert [m.method for m in seen] == ["EngineStatus"]
    assert client.notifications.empty()


async def test_notification_queue_keeps_the_newest(sim: CoreSimulator, make_client: Any) -> None:
    client: QrcClient = await make_client(sim.port, max_notifications=2)
    await client.call("NoOp", {})
    for state in ("Idle", "Active", "Idle"):
        sim.set_state(state)
    await client.call("NoOp", {})
    first = await client.next_notification(timeout=1)
    second = await client.next_notification(timeout=1)
    assert [first.params["State"], second.params["State"]] == ["Active", "Idle"]


async def test_send_raw_and_garbage_from_the_server_side(qrc_client: QrcClient) -> None:
    await qrc_client.send_raw(b"garbage\x00")
    # The parse error reply has id null, matches nothing, and is dropped; the client keeps working.
    assert await qrc_client.call("NoOp", {}) is True


async def test_pending_calls_fail_when_the_core_goes_away(
    sim: CoreSimulator, qrc_client: QrcClient
) -> None:
    sim.faults.swallow_replies = -1
    pending = asyncio.ensure_future(qrc_client.call("NoOp", {}, timeout=10))
    await asyncio.sleep(0.1)
    sim.drop_connections()
    with pytest.raises(ConnectionClosed):
        await pending
    assert isinstance(qrc_client.close_reason, ConnectionClosed)


async def test_close_is_idempotent_and_calls_then_fail(qrc_client: QrcClient) -> None:
    await qrc_client.close()
    await qrc_client.close()
    assert qrc_client.closed.is_set()
    with pytest.raises(ConnectionClosed):
        await qrc_client.call("NoOp", {})


async def test_context_manager(sim: CoreSimulator) -> None:
    async with await QrcClient.connect("127.0.0.1", sim.port) as client:
        assert await client.call("NoOp", {}) is True
    assert client.closed.is_set()
