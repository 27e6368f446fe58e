"""A small asyncio QRC client: one TCP connection, id correlation, pushed notifications.

Used by tests, benchmarks and the demo, and as the transport under the
gateway's upstream connection.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl as ssl_module
from collections.abc import Callable
from typing import Any, Protocol, cast

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


class QrcClient(asyncio.Protocol):
    """One connection, read as the bytes arrive (an `asyncio.Protocol`, no reader task):
    a response goes to its waiter in the same event-loop pass that read it."""

    def __init__(
        self,
        *,
        max_frame_bytes: int = 1024 * 1024,
        max_notifications: int = 10000,
        on_notification: Callable[[jsonrpc.Request], None] | None = None,
    ) -> None:
        self._transport: asyncio.Transport  # set by connection_made, before connect returns
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
        # Calls are written once per event-loop pass: one send for every call made in
        # that pass instead of a syscall each.
        self._out: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._writable: asyncio.Future[None] | None = None
        """Pending while the transport's buffer is over its high-water mark (`send_raw` waits)."""

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = 5.0,
        ssl: ssl_module.SSLContext | None = None,
        local_addr: tuple[str, int] | None = None,
        **kwargs: Any,
    ) -> QrcClient:
        """`local_addr`: the address to connect from (a port of 0 picks one)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, client = await loop.create_connection(
                lambda: cls(**kwargs), host, port, ssl=ssl, local_addr=local_addr
            )
        return client

    # ---- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.closed.is_set():
            return
        try:
            for frame in self._decoder.feed(data):
                if frame is FRAME_TOO_LARGE:
                    continue
                assert isinstance(frame, bytes)
                self._dispatch(frame)
        except Exception as exc:
            self._end(exc)
            self._transport.abort()

    def eof_received(self) -> bool:
        self._end(ConnectionClosed("connection closed by peer"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc or ConnectionClosed("connection closed by peer"))
        if not self._lost.done():
            self._lost.set_result(None)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _end(self, reason: BaseException) -> None:
        """The connection is over for its calls: each pending one fails now."""
        if self.closed.is_set():
            return
        self.close_reason = reason
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
            if not self._transport.is_closing():
                self._transport.write(data)

    async def notify(self, method: str, params: Any = None) -> None:
        await self.send_raw(encode_frame(jsonrpc.Request(method, params).to_dict()))

    async def send_raw(self, data: bytes) -> None:
        """Write data after the calls not yet sent; wait while the peer is not taking it."""
        if self.closed.is_set():
            raise ConnectionClosed("connection closed")
        self._flush()
        self._transport.write(data)
        writable = self._writable
        if writable is not None and not writable.done():
            await asyncio.shield(writable)
        if self.closed.is_set():
            raise ConnectionClosed("connection closed")

    @property
    def write_buffer_size(self) -> int:
        """Bytes written and not yet taken by the peer's socket."""
        return self._transport.get_write_buffer_size()

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
        """Fail the pending calls and close the socket. What the peer has not taken within
        `timeout` seconds is dropped and the connection reset: a peer that stops reading
        (a hung Core, a stalled client) cannot hold the caller."""
        self._end(ConnectionClosed("connection closed"))
        self._transport.close()
        try:
            # shielded: a timeout would cancel the future every later close waits for
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._lost)
        except TimeoutError:
            self._transport.abort()

    def drop(self) -> None:
        """Fail the pending calls now and reset the socket."""
        self._end(ConnectionClosed("connection dropped"))
        self._transport.abort()

    async def __aenter__(self) -> QrcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
