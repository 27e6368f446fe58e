"""A small asyncio QRC client: one TCP connection, id correlation, pushed notifications.

Used by tests, benchmarks and the demo, and as the transport under the
gateway's upstream connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl as ssl_module
from collections.abc import Callable
from typing import Any, Protocol

from . import jsonrpc
from .errors import QrcError
from .framing import FRAME_TOO_LARGE, FrameDecoder, encode_frame

CLOSE_TIMEOUT = 2.0
"""Seconds `QrcClient.close` waits for the peer to take what is still unsent."""


class ConnectionClosed(ConnectionError):
    pass


class ReplyWaiter(Protocol):
    """What waits for a call's response: an `asyncio.Future`, or an object that finishes
    the call in its callbacks (`QrcClient.send_call`), as the response is read."""

    def done(self) -> bool: ...
    def set_result(self, result: jsonrpc.Response, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class QrcClient:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_frame_bytes: int = 1024 * 1024,
        max_notifications: int = 10000,
        on_notification: Callable[[jsonrpc.Request], None] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder(max_frame_bytes)
        self._ids = itertools.count(1)
        self._pending: dict[int | str, ReplyWaiter] = {}
        self._deadlines: dict[int | str, float] = {}
        """Loop time by which each pending call with a timeout fails with TimeoutError:
        one timer for the connection, at the earliest deadline, not one per call."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.notifications: asyncio.Queue[jsonrpc.Request] = asyncio.Queue(max_notifications)
        self._on_notification = on_notification
        self.closed = asyncio.Event()
        self.close_reason: BaseException | None = None
        # Frames of `request` are written once per event-loop pass: one send for
        # every call made in that pass instead of a syscall each (a call alone in
        # flight is written at once).
        self._out: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._reader_task = self._loop.create_task(self._read_loop())

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = 5.0,
        ssl: ssl_module.SSLContext | None = None,
        **kwargs: Any,
    ) -> QrcClient:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=ssl, limit=2**20)
        return cls(reader, writer, **kwargs)

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    raise ConnectionClosed("connection closed by peer")
                for frame in self._decoder.feed(data):
                    if frame is FRAME_TOO_LARGE:
                        continue
                    assert isinstance(frame, bytes)
                    self._dispatch(frame)
        except (asyncio.CancelledError, Exception) as exc:
            self.close_reason = exc
        finally:
            self.closed.set()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._deadlines.clear()
            pending, self._pending = self._pending, {}
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionClosed("connection closed"))

    def _dispatch(self, frame: bytes) -> None:
        try:
            msg = jsonrpc.parse_message(frame)
        except jsonrpc.InvalidMessage:
            return
        if isinstance(msg, jsonrpc.Response):
            if msg.id is None:
                return
            fut = self._pending.pop(msg.id, None)
            if fut is not None:
                self._deadlines.pop(msg.id, None)
                if not fut.done():
                    fut.set_result(msg)
            return
        if self._on_notification is not None:
            self._on_notification(msg)
            return
        if self.notifications.full():
            self.notifications.get_nowait()
        self.notifications.put_nowait(msg)

    async def request(
        self, method: str, params: Any = None, *, timeout: float | None = 10.0
    ) -> jsonrpc.Response:
        """Send one call and wait for its response (error responses are returned, not raised)."""
        fut: asyncio.Future[jsonrpc.Response] = self._loop.create_future()
        rid = self.send_call(method, params, fut, timeout)
        try:
            return await fut
        finally:
            self._pending.pop(rid, None)
            self._deadlines.pop(rid, None)

    def send_call(
        self, method: str, params: Any, waiter: ReplyWaiter, timeout: float | None = 10.0
    ) -> int:
        """Send one call whose response (or `TimeoutError`, `ConnectionClosed`) goes to
        `waiter` from the read loop or the timer, no task waiting for it; returns its id,
        for `forget`. Raises `ConnectionClosed` at once when the socket is closed."""
        if self.closed.is_set():
            raise ConnectionClosed("connection closed")
        rid = next(self._ids)
        self._pending[rid] = waiter
        frame = encode_frame(jsonrpc.Request(method, params, rid).to_dict())
        if len(self._pending) == 1 and not self._out and not self._writer.is_closing():
            # the only call in flight: sent now, an event-loop pass sooner
            self._writer.write(frame)
        else:
            if not self._out:
                self._loop.call_soon(self._flush)
            self._out.append(frame)
        if timeout is not None:
            loop = self._loop
            deadline = loop.time() + timeout
            self._deadlines[rid] = deadline
            if self._timer is None or deadline < self._timer_at:
                self._arm(loop, deadline)
        return rid

    def forget(self, rid: int) -> bool:
        """Stop waiting for call `rid` (its waiter is told nothing); False when it had
        already been answered. A response that comes later is dropped."""
        self._deadlines.pop(rid, None)
        return self._pending.pop(rid, None) is not None

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._expire)

    def _expire(self) -> None:
        """Fail the calls past their deadline; wait for the earliest of the others."""
        self._timer = None
        loop = self._loop
        now = loop.time() + 0.001  # a timer may fire a little early (libuv: milliseconds)
        earliest: float | None = None
        expired: list[ReplyWaiter] = []
        for rid, deadline in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[rid]
                fut = self._pending.pop(rid, None)
                if fut is not None:
                    expired.append(fut)
            elif earliest is None or deadline < earliest:
                earliest = deadline
        if earliest is not None:
            self._arm(loop, earliest)
        for fut in expired:  # after the timer: a waiter may send the next call
            if not fut.done():
                fut.set_exception(TimeoutError())

    async def call(self, method: str, params: Any = None, *, timeout: float | None = 10.0) -> Any:
        """Send one call; return its result or raise `QrcError` with the error it got."""
        resp = await self.request(method, params, timeout=timeout)
        if resp.error is not None:
            raise QrcError.from_error_object(resp.error)
        return resp.result

    def _flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            if not self._writer.is_closing():
                self._writer.write(data)

    async def notify(self, method: str, params: Any = None) -> None:
        self._flush()
        self._writer.write(encode_frame(jsonrpc.Request(method, params).to_dict()))
        await self._writer.drain()

    async def send_raw(self, data: bytes) -> None:
        self._flush()
        self._writer.write(data)
        await self._writer.drain()

    async def next_notification(
        self, method: str | None = None, *, timeout: float = 5.0
    ) -> jsonrpc.Request:
        """The next pushed message (of `method`, skipping others)."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.notifications.get()
                if method is None or msg.method == method:
                    return msg

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the socket. What the peer has not taken within `timeout` seconds is
        dropped and the connection reset: a peer that stops reading (a hung Core, a
        stalled client) cannot hold the caller."""
        self._reader_task.cancel()
        with contextlib.suppress(BaseException):
            await self._reader_task
        self._writer.close()
        try:
            # shielded: the close waiter is the protocol's own future, which a timeout
            # would cancel for every later wait_closed (a second close would raise)
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._writer.wait_closed())
        except TimeoutError:
            self._writer.transport.abort()
        except OSError:
            pass  # the peer reset the connection: it is closed

    async def __aenter__(self) -> QrcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
