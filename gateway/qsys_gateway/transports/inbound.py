"""A connection's received messages on their way to admission, shared by the raw QRC and
WebSocket connections (both `asyncio.Protocol`s that read as the bytes arrive).

A message is handed to admission at once while nothing waits; the first one that has to
wait (a full lane or gate, a Redis rate limit, a logon step) starts one task that
finishes it and then hands the messages received meanwhile to admission in order. Past
`QUEUED_BYTES` of those, the socket is not read until they are taken (TCP pushes back on
the client). An idle connection holds no task and no queue."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

QUEUED_BYTES = 256 * 1024
"""Received messages waiting for the connection's calls to make room: past this, the
socket is not read until they are taken."""

M = TypeVar("M")
Rest = Coroutine[Any, Any, Any]


class Inbound(asyncio.Protocol, Generic[M]):
    """The received-message queue of a connection; the subclass says how one message
    goes to admission (`_take`), what to do after each awaited one (`_taken`), whether
    to go on with the queue (`_taking`) and whether the socket may be read again
    (`_readable`)."""

    __slots__ = ("_loop", "_paused", "_queue", "_queued", "_worker", "transport")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        """Kept: in Python 3.11 every `asyncio.get_running_loop()` is a `getpid` syscall."""
        self.transport: asyncio.Transport | None = None
        self._queue: deque[M] | None = None
        """Messages not yet handed to admission (made by the first that waits)."""
        self._queued = 0
        """Their bytes."""
        self._paused = False
        """Reading paused (the queue is full, or the subclass paused it)."""
        self._worker: asyncio.Task[None] | None = None
        """Finishes the message in hand, then hands the queued ones on; only while some
        wait."""

    # ---- for the subclass -------------------------------------------------------------

    def _take(self, message: M) -> Rest | None:
        """One message to admission, as far as it goes without waiting: None when done,
        else the rest, to await before the next message."""
        raise NotImplementedError

    def _taken(self) -> None:
        """After each message that had to wait."""

    def _taking(self) -> bool:
        """Whether the queued messages are still handed on (False: left unanswered)."""
        return True

    def _readable(self) -> bool:
        """Whether the socket may be read again once the queue is empty."""
        return True

    # ---- the queue --------------------------------------------------------------------

    def _arrived(self, message: M) -> None:
        """A message received: to admission at once, or queued behind the one waiting."""
        if self._worker is None:
            rest = self._take(message)
            if rest is not None:
                self._worker = self._loop.create_task(self._work(rest))
            return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(message)
        self._queued += _size(message)
        if self._queued > QUEUED_BYTES and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True

    async def _work(self, rest: Rest) -> None:
        """Finish the message in hand, then hand the waiting ones to admission in order (a
        message in hand is finished even when the connection is closing)."""
        try:
            await rest
            self._taken()
            queue = self._queue
            while queue and self._taking():
                message = queue.popleft()
                self._queued = max(0, self._queued - _size(message))
                more = self._take(message)
                if more is not None:
                    await more
                    self._taken()
        finally:
            self._worker = None
            self._queued = 0
            if self._queue is not None:
                self._queue.clear()
            if self._paused and self._readable() and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()


def _size(message: object) -> int:
    """What a queued message counts against `QUEUED_BYTES` (a marker such as an oversized
    frame's, whose bytes were never kept: nothing)."""
    return len(message) if isinstance(message, bytes | str) else 0
