"""Fault injection: latency, dropped sockets, swallowed replies, logon refusal, restarts."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from qsys_core_sim.server import CoreSimulator
from qsys_protocol.qrc.client import ConnectionClosed, QrcClient
from qsys_protocol.qrc.errors import ErrorCode, QrcError

pytestmark = pytest.mark.timeout(30)


async def test_latency_delays_replies(sim: CoreSimulator, qrc_client: QrcClient) -> None:
    loop = asyncio.get_running_loop()
    sim.faults.latency = 0.3
    start = loop.time()
    results = await asyncio.gather(*(qrc_client.call("NoOp", {}) for _ in range(5)))
    elapsed = loop.time() - start
    assert results == [True] * 5
    assert 0.29 <= elapsed < 3
    sim.faults.clear()
    start = loop.time()
    await qrc_client.call("NoOp", {})
    assert loop.time() - start < 0.25


async def test_latency_keeps_reply_order(sim: CoreSimulator, make_raw: Any) -> None:
    raw = await make_raw(sim.port)
    await raw.recv()
    sim.faults.latency = 0.05
    for i in range(20):
        await raw.send_json({"jsonrpc": "2.0", "id": i, "method": "NoOp", "params": {}})
    assert [(await raw.recv_reply())["id"] for _ in range(20)] == list(range(20))


async def test_dropped_connection(sim: CoreSimulator, make_client: Any) -> None:
    client: QrcClient = await make_client(sim.port)
    assert await client.call("NoOp", {}) is True
    sim.faults.drop_on_request = 1
    with pytest.raises(ConnectionClosed):
        await client.call("Control.Get", ["MainGain"], timeout=5)
    await asyncio.wait_for(client.closed.wait(), 5)
    # Only one request was dropped: a new connection works.
    again: QrcClient = await make_client(sim.port)
    assert await again.call("NoOp", {}) is True
    assert sim.faults.drop_on_request == 0


async def test_swallowed_replies(sim: CoreSimulator, qrc_client: QrcClient) -> None:
    sim.faults.swallow_replies = 2
    for _ in range(2):
        with pytest.raises(TimeoutError):
            await qrc_client.call("Control.Set", {"Name": "MainGain", "Value": -4}, timeout=0.3)
    # The request was processed even though it was never answered.
    assert (await qrc_client.call("Control.Get", ["MainGain"]))[0]["Value"] == -4.0


async def test_hung_core_swallows_everything(sim: CoreSimulator, qrc_client: QrcClient) -> None:
    sim.faults.swallow_replies = -1
    for _ in range(3):
        with pytest.raises(TimeoutError):
            await qrc_client.call("NoOp", {}, timeout=0.2)
    sim.faults.clear()
    assert await qrc_client.call("NoOp", {}) is True


async def test_logon_refused(qsys_simulator: Any, make_client: Any) -> None:
    sim: CoreSimulator = await qsys_simulator(username="u", password="p")
    sim.faults.refuse_logon = True
    client: QrcClient = await make_client(sim.port)
    with pytest.raises(QrcError) as info:
        await client.call("Logon", {"User": "u", "Password": "p"})
    assert info.value.code == ErrorCode.LOGON_REQUIRED
    sim.faults.refuse_logon = False
    assert await client.call("Logon", {"User": "u", "Password": "p"}) is True
    assert await client.call("Control.Get", ["MainGain"])


async def test_refused_connections(sim: CoreSimulator, make_raw: Any) -> None:
    sim.faults.refuse_connections = True
    raw = await make_raw(sim.port)
    assert await raw.closed_by_peer(timeout=5)
    assert not sim.connections


async def test_restart_loses_change_groups_but_keeps_values(
    sim: CoreSimulator, make_client: Any
) -> None:
    client: QrcClient = await make_client(sim.port)
    await client.call("ChangeGroup.AddControl", {"Id": "g", "Controls": ["MainGain"]})
    await client.call("Control.Set", {"Name": "MainGain", "Value": -11})
    port = sim.port
    await sim.restart(downtime=0.1)
    assert sim.port == port
    await asyncio.wait_for(client.closed.wait(), 5)
    with pytest.raises(ConnectionClosed):
        await client.call("NoOp", {})
    assert sim.engine.change_group_count == 0
    again: QrcClient = await make_client(sim.port)
    status = await again.next_notification("EngineStatus", timeout=5)
    assert status.params["State"] == "Active"
    with pytest.raises(QrcError) as info:
        await again.call("ChangeGroup.Poll", {"Id": "g"})
    assert info.value.code == ErrorCode.UNKNOWN_CHANGE_GROUP
    assert (await again.call("Control.Get", ["MainGain"]))[0]["Value"] == -11.0


async def test_drop_connections_stops_autopoll(sim: CoreSimulator, make_client: Any) -> None:
    client: QrcClient = await make_client(sim.port)
    await client.call("ChangeGroup.AddControl", {"Id": 1, "Controls": ["MainGain"]})
    await client.call("ChangeGroup.AutoPoll", {"Id": 1, "Rate": 0.05})
    await client.next_notification("ChangeGroup.Poll", timeout=5)
    (conn,) = sim.connections
    task = next(iter(conn.autopolls.values()))
    sim.drop_connections()
    await asyncio.wait_for(client.closed.wait(), 5)
    await asyncio.sleep(0)
    assert task.done()
    assert not sim.connections
    assert sim.engine.change_group_count == 0


async def test_stopped_simulator_refuses_connections(qsys_simulator: Any) -> None:
    sim: CoreSimulator = await qsys_simulator()
    port = sim.port
    await sim.stop()
    assert not sim.running
    with pytest.raises(ConnectionRefusedError):
        await QrcClient.connect("127.0.0.1", port, timeout=2)


def _listen(port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


async def test_a_stopped_simulator_keeps_its_port_until_closed(qsys_simulator: Any) -> None:
    """Nothing else takes a stopped Core's port (a listener that would answer in its place,
    or a client socket connected to itself); it comes back on it, and close gives it up."""
    sim: CoreSimulator = await qsys_simulator()
    port = sim.port
    await sim.stop()
    with pytest.raises(OSError, match="in use"):
        _listen(port)
    await sim.start()
    assert sim.port == port
    client = await QrcClient.connect("127.0.0.1", port, timeout=2)
    assert (await client.call("StatusGet", 0, timeout=2))["State"] == "Active"
    await client.close()
    await sim.stop()
    await sim.close()
    _listen(port)
