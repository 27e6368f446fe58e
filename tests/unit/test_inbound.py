"""The received-message queue the raw QRC and WebSocket connections share
(`transports.inbound.Inbound`), on a real socket pair's transport: at once while
nothing waits, in order behind a message that waits, reading paused past the byte
bound and resumed when the queue is taken."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from qsys_gateway.transports.inbound import QUEUED_BYTES, Inbound, Rest


class Probe(Inbound[bytes]):
    """Messages starting with b"wait" wait for `gate`; the others are done at once."""

    __slots__ = ("gate", "readable", "taken", "taken_after_wait", "taking")

    def __init__(self) -> None:
        super().__init__()
        self.taken: list[bytes] = []
        self.taken_after_wait = 0
        self.gate = asyncio.get_running_loop().create_future()
        self.taking = True
        self.readable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def _take(self, message: bytes) -> Rest | None:
        self.taken.append(message)
        if message.startswith(b"wait"):
            return self._wait()
        return None

    async def _wait(self) -> None:
        await asyncio.shield(self.gate)

    def _taken(self) -> None:
        self.taken_after_wait += 1

    def _taking(self) -> bool:
        return self.taking

    def _readable(self) -> bool:
        return self.readable


@pytest.fixture
async def probe() -> AsyncIterator[Probe]:
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_accepted_socket(Probe, ours)
    try:
        yield protocol
    finally:
        transport.abort()
        theirs.close()


async def _drained(probe: Probe) -> None:
    worker = probe._worker
    assert worker is not None
    await asyncio.wait_for(worker, 2)


def _reading(probe: Probe) -> bool:
    assert probe.transport is not None
    return probe.transport.is_reading()


async def test_messages_go_at_once_while_nothing_waits(probe: Probe) -> None:
    for message in (b"a", b"b", b"c"):
        probe._arrived(message)
    assert probe.taken == [b"a", b"b", b"c"]
    assert probe._worker is None
    assert probe._queue is None  # no queue made while nothing waited
    assert probe._queued == 0


async def test_queued_behind_a_waiting_message_in_order(probe: Probe) -> None:
    probe._arrived(b"wait-1")
    for message in (b"x", b"wait-2", b"y"):
        probe._arrived(message)
    assert probe.taken == [b"wait-1"]  # the rest wait behind it
    assert probe._queued == len(b"x") + len(b"wait-2") + len(b"y")
    probe.gate.set_result(None)
    await _drained(probe)
    assert probe.taken == [b"wait-1", b"x", b"wait-2", b"y"]
    assert probe.taken_after_wait == 2  # after each message that waited
    assert probe._worker is None
    assert probe._queued == 0
    probe._arrived(b"z")  # at once again
    assert probe.taken[-1] == b"z"
    assert probe._worker is None


async def test_reading_pauses_past_the_byte_bound_and_resumes_when_taken(probe: Probe) -> None:
    probe._arrived(b"wait")
    chunk = b"m" * 1024
    for _ in range(QUEUED_BYTES // len(chunk)):
        probe._arrived(chunk)
    assert probe._queued == QUEUED_BYTES
    assert _reading(probe)  # at the bound: still read
    assert not probe._paused
    probe._arrived(b"!")
    assert probe._queued == QUEUED_BYTES + 1
    assert probe._paused  # past it: TCP pushes back
    assert not _reading(probe)
    probe.gate.set_result(None)
    await _drained(probe)
    assert len(probe.taken) == 1 + QUEUED_BYTES // len(chunk) + 1
    assert probe.taken[-1] == b"!"
    assert not probe._paused
    assert _reading(probe)
    assert probe._queued == 0


async def test_a_closing_connection_drops_the_queue_and_stays_unread(probe: Probe) -> None:
    probe._arrived(b"wait")
    probe._arrived(b"n" * (QUEUED_BYTES + 1))
    assert probe._paused
    probe.taking = False  # e.g. the WebSocket's close frame was sent
    probe.readable = False  # e.g. the socket is finishing
    probe.gate.set_result(None)
    await _drained(probe)
    assert probe.taken == [b"wait"]  # the one in hand is finished, the rest dropped
    assert probe._queue is not None
    assert not probe._queue
    assert probe._queued == 0
    assert probe._paused
    assert not _reading(probe)


async def test_a_cancelled_worker_leaves_nothing_queued(probe: Probe) -> None:
    probe._arrived(b"wait")
    probe._arrived(b"q" * (QUEUED_BYTES + 1))
    worker = probe._worker
    assert worker is not None
    await asyncio.sleep(0)  # waiting in the message in hand
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    assert probe._worker is None
    assert probe._queued == 0
    assert probe._queue is not None
    assert not probe._queue
    assert not probe._paused
    assert _reading(probe)
