"""QrcClient against the simulator: correlation, pipelining, pushes, errors, close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
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


@pytest.mark.parametrize("how", ["reset", "closed"])
async def test_pending_calls_fail_when_the_core_goes_away(
    sim: CoreSimulator, qrc_client: QrcClient, how: str
) -> None:
    """The Core drops the socket or closes its side: the calls fail, the client says so,
    and its own socket closes too."""
    sim.faults.swallow_replies = -1
    pending = asyncio.ensure_future(qrc_client.call("NoOp", {}, timeout=10))
    await asyncio.sleep(0.1)
    if how == "reset":
        sim.drop_connections()
    for conn in list(sim.connections):
        assert conn.transport is not None
        conn.transport.close()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(pending, 5)
    assert qrc_client.closed.is_set()
    assert isinstance(qrc_client.close_reason, ConnectionClosed)
    await wait_until(lambda: qrc_client._lost.done())


async def test_close_is_idempotent_and_calls_then_fail(qrc_client: QrcClient) -> None:
    await qrc_client.close()
    await qrc_client.close()
    assert qrc_client.closed.is_set()
    with pytest.raises(ConnectionClosed):
        await qrc_client.call("NoOp", {})


async def test_close_is_bounded_when_the_peer_stops_reading(
    sim: CoreSimulator, qrc_client: QrcClient
) -> None:
    """A Core that takes nothing more: close() drops what is unsent and resets the socket
    after its timeout instead of waiting for the Core for ever."""
    sim.stop_reading()
    big = "x" * (1 << 20)
    calls = [asyncio.ensure_future(qrc_client.call("NoOp", {"pad": big})) for _ in range(64)]
    await asyncio.sleep(0.2)
    assert qrc_client.write_buffer_size > 0  # the Core's side is full
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(qrc_client.close(timeout=0.5), 10)
    assert loop.time() - started < 3
    assert qrc_client.closed.is_set()
    await asyncio.wait_for(qrc_client.close(), 1)  # and again, at once
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, ConnectionClosed) for r in results), results


async def test_responses_reach_their_waiters_without_a_task(sim: CoreSimulator) -> None:
    """The socket is read by the protocol's callbacks: no task per connection or call."""
    tasks = len(asyncio.all_tasks())
    async with await QrcClient.connect("127.0.0.1", sim.port) as client:
        waiters = [Waiter() for _ in range(8)]
        for waiter in waiters:
            client.send_call("Control.Get", ["MainGain"], waiter, timeout=5)
        assert len(asyncio.all_tasks()) == tasks
        await asyncio.wait_for(asyncio.gather(*(w.ended.wait() for w in waiters)), 5)
        assert all(isinstance(w.outcome, jsonrpc.Response) for w in waiters)


async def test_drop_fails_the_pending_calls_at_once(
    sim: CoreSimulator, qrc_client: QrcClient
) -> None:
    sim.faults.swallow_replies = -1
    waiters = [Waiter() for _ in range(3)]
    for waiter in waiters:
        qrc_client.send_call("NoOp", {}, waiter, timeout=10)
    qrc_client.drop()
    assert all(isinstance(w.outcome, ConnectionClosed) for w in waiters)
    assert qrc_client.closed.is_set()
    with pytest.raises(ConnectionClosed):
        qrc_client.send_call("NoOp", {}, Waiter())
    with pytest.raises(ConnectionClosed):
        await qrc_client.send_raw(b"{}\x00")
    await asyncio.wait_for(qrc_client.close(), 2)
    await wait_until(lambda: not sim.connections)


async def wait_until(ready: Any, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not ready():
            await asyncio.sleep(0.01)


async def test_context_manager(sim: CoreSimulator) -> None:
    async with await QrcClient.connect("127.0.0.1", sim.port) as client:
        assert await client.call("NoOp", {}) is True
    assert client.closed.is_set()


@contextlib.asynccontextmanager
async def silent_core() -> AsyncIterator[QrcClient]:
    """A client of a Core that reads everything and never answers."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    client = await QrcClient.connect("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        yield client
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_each_call_times_out_at_its_own_deadline_with_one_timer() -> None:
    """A Core that never answers: calls fail at their own timeouts, in deadline order,
    also when a shorter one is sent after a longer one; an answered call never times out."""
    loop = asyncio.get_running_loop()
    async with silent_core() as client:
        start = loop.time()
        ended: dict[str, float] = {}

        async def call(name: str, timeout: float) -> None:
            with pytest.raises(TimeoutError):
                await client.request("NoOp", {}, timeout=timeout)
            ended[name] = loop.time() - start

        await asyncio.gather(call("long", 0.6), call("short", 0.15), call("middle", 0.3))
        assert list(ended) == ["short", "middle", "long"]
        assert 0.14 <= ended["short"] < 0.3
        assert 0.29 <= ended["middle"] < 0.45
        assert 0.59 <= ended["long"] < 0.9
        assert not client._deadlines
        assert not client._pending


async def test_an_answered_call_leaves_no_deadline_behind(qrc_client: QrcClient) -> None:
    for _ in range(3):
        assert await qrc_client.call("NoOp", {}, timeout=0.05) is True
    await asyncio.sleep(0.1)  # the connection's timer fires and finds nothing to fail
    assert not qrc_client._deadlines
    assert await qrc_client.call("NoOp", {}) is True


class Waiter:
    """A `ReplyWaiter` that records how its call ended; `then` runs as it ends."""

    def __init__(self, then: Any = None) -> None:
        self.outcome: jsonrpc.Response | BaseException | None = None
        self.ended = asyncio.Event()
        self.then = then

    def done(self) -> bool:
        return self.outcome is not None

    def set_result(self, result: jsonrpc.Response, /) -> None:
        self._end(result)

    def set_exception(self, exception: BaseException, /) -> None:
        self._end(exception)

    def _end(self, outcome: jsonrpc.Response | BaseException) -> None:
        assert self.outcome is None, "ended twice"
        self.outcome = outcome
        self.ended.set()
        if self.then is not None:
            self.then()


async def test_a_call_sent_to_a_waiter_ends_there(qrc_client: QrcClient) -> None:
    waiter = Waiter()
    rid = qrc_client.send_call("Control.Get", ["MainGain"], waiter, timeout=5)
    await asyncio.wait_for(waiter.ended.wait(), 5)
    assert isinstance(waiter.outcome, jsonrpc.Response)
    assert waiter.outcome.id == rid
    assert waiter.outcome.error is None
    assert not qrc_client._pending
    assert not qrc_client._deadlines


async def test_a_forgotten_call_is_never_answered(
    sim: CoreSimulator, qrc_client: QrcClient
) -> None:
    sim.faults.latency = 0.2
    waiter = Waiter()
    rid = qrc_client.send_call("NoOp", {}, waiter, timeout=0.3)
    assert qrc_client.forget(rid)
    assert not qrc_client.forget(rid)
    await asyncio.sleep(0.5)  # its answer came, its deadline passed: neither reaches it
    assert waiter.outcome is None
    assert not qrc_client._pending
    assert not qrc_client._deadlines
    assert await qrc_client.call("NoOp", {}) is True


async def test_waiters_told_of_a_lost_connection_may_call_again(
    sim: CoreSimulator, qrc_client: QrcClient
) -> None:
    """Each waiter hears `ConnectionClosed` once, also when one of them calls again on
    the closed client as it hears it (the call is refused at once)."""
    sim.faults.swallow_replies = -1
    refused: list[BaseException] = []

    def again() -> None:
        try:
            qrc_client.send_call("NoOp", {}, Waiter())
        except ConnectionClosed as exc:
            refused.append(exc)

    waiters = [Waiter(again), Waiter(), Waiter(again)]
    for waiter in waiters:
        qrc_client.send_call("NoOp", {}, waiter, timeout=10)
    await asyncio.sleep(0.1)
    sim.drop_connections()
    await asyncio.wait_for(asyncio.gather(*(w.ended.wait() for w in waiters)), 5)
    assert all(isinstance(w.outcome, ConnectionClosed) for w in waiters)
    assert len(refused) == 2
    assert not qrc_client._pending


async def test_a_timed_out_waiter_may_send_the_next_call() -> None:
    """A Core that never answers: a waiter that calls again as its call times out gets
    that call timed out too, at its own deadline."""

    async with silent_core() as client:
        second = Waiter()
        first = Waiter(lambda: client.send_call("NoOp", {}, second, timeout=0.1))
        client.send_call("NoOp", {}, first, timeout=0.1)
        await asyncio.wait_for(second.ended.wait(), 2)
        assert isinstance(first.outcome, TimeoutError)
        assert isinstance(second.outcome, TimeoutError)
        assert not client._pending
        assert not client._deadlines
