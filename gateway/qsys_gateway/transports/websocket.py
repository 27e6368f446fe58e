"""WebSocket transports, JSON-RPC both ways, pushing EngineStatus and AutoPoll.

`GET /v1/ws` is the gateway's own; `GET /qrc-public-api/v0` is the vendor's QRWC
path (what `@q-sys/qrwc` and the seeds' web panels dial on a Core), which also takes
the token from an `apiKey` field in each request. Both run the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from qsys_protocol.qrc.errors import ErrorCode, QrcError

from ..admission import Refusal
from ..client_registry import ClientHandle
from .connected import ConnectedClient
from .responses import SERVICES, bearer, error_response, source_ip

log = logging.getLogger("qsys_gateway.websocket")

_CLOSERS: set[asyncio.Task[None]] = set()
"""Slow clients being closed (one set for all, not one per client)."""

_LEN16 = struct.Struct("!BBH").pack
_LEN64 = struct.Struct("!BBQ").pack


def text_frame_header(size: int) -> bytes:
    """The header of a final, unmasked, uncompressed text frame of `size` bytes (RFC 6455)."""
    if size < 126:
        return bytes((0x81, size))
    if size < 65536:
        return _LEN16(0x81, 126, size)
    return _LEN64(0x81, 127, size)


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "ws", api_key=False)


async def qrwc_handler(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "qrwc", api_key=True)


class _Outbox:
    """What a WebSocket client is sent. Replies wait in `pending` until the end of the
    event-loop pass (`flush`), or for a writer task that exists only while the socket is
    backed up: an idle client holds no task, queue or last message."""

    __slots__ = (
        "backlog",
        "budget",
        "dead",
        "flush_due",
        "pending",
        "request",
        "rid",
        "transport",
        "writer",
        "ws",
    )

    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, transport: str, rid: str
    ) -> None:
        self.request = request
        self.ws = ws
        self.transport = transport
        self.rid = rid
        self.budget = request.app[SERVICES].runtime.send_budget
        self.pending: list[bytes] = []
        self.writer: asyncio.Task[None] | None = None
        self.flush_due = False
        self.backlog = 0
        self.dead = False
        """Closed for being slow, or finished: nothing more is queued."""

    def send(self, message: dict[str, Any]) -> None:
        if self.dead or self.ws.closed:
            return
        data = orjson.dumps(message)
        size = len(data)
        if not self.budget.admits(self.backlog, size):
            self.close_slow()
            return
        self.backlog += size
        self.budget.take(size)
        self.pending.append(data)
        if not self.flush_due:
            self.flush_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """End of the event-loop pass: what was sent in it goes out in one write while the
        socket keeps up; otherwise (or compressed) a writer task waits for it to drain."""
        self.flush_due = False
        pending = self.pending
        if self.writer is not None or self.dead or not pending:
            return
        sock = self.request.transport
        if self.ws.closed or sock is None or sock.is_closing():
            self.release_queue()
            return
        if self.ws.compress or sock.get_write_buffer_size() > 0:
            self.writer = asyncio.get_running_loop().create_task(self.write_pending())
            return
        sent = 0
        frames = []
        for data in pending:
            sent += len(data)
            frames.append(text_frame_header(len(data)))
            frames.append(data)
        pending.clear()
        sock.write(b"".join(frames))
        self.backlog -= sent
        self.budget.give(sent)

    async def write_pending(self) -> None:
        """Write what is pending, in order, then end (the next `send` starts another)."""
        pending = self.pending
        try:
            while pending and not self.dead:
                batch = pending.copy()
                pending.clear()
                for data in batch:
                    await self.ws.send_frame(data, WSMsgType.TEXT)
                    if not self.dead:  # else release_queue() gave it back already
                        self.backlog -= len(data)
                        self.budget.give(len(data))
                del batch
        except (ConnectionError, RuntimeError):
            pass  # the client went away: the handler ends and gives the rest back
        finally:
            self.writer = None

    def close_slow(self) -> None:
        self.dead = True
        log.warning("closing a WebSocket client that does not read", extra={"request_id": self.rid})
        self.request.app[SERVICES].runtime.metrics.slow_clients.labels(self.transport).inc()
        if self.writer is not None:
            self.writer.cancel()
        self.release_queue()
        closer = asyncio.get_running_loop().create_task(self.slow_close())
        _CLOSERS.add(closer)
        closer.add_done_callback(_CLOSERS.discard)

    async def slow_close(self) -> None:
        try:
            async with asyncio.timeout(2.0):
                await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"client too slow")
        except TimeoutError:
            sock = self.request.transport
            if sock is not None:
                sock.abort()

    def release_queue(self) -> None:
        self.pending.clear()
        self.budget.give(self.backlog)
        self.backlog = 0

    async def close(self) -> None:
        await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutting down")

    async def finish(self) -> None:
        """The handler ends: what is pending is written first (bounded), then closed."""
        self.flush()
        if self.writer is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self.writer, 2.0)
        self.dead = True
        self.release_queue()
        if not self.ws.closed:
            await self.ws.close()


async def _serve(request: web.Request, transport: str, *, api_key: bool) -> web.StreamResponse:
    svc = request.app[SERVICES]
    rt = svc.runtime
    rid: str = request["request_id"]
    source = source_ip(request)
    if rt.shutting_down:
        return error_response(QrcError(ErrorCode.CORE_UNAVAILABLE, "Gateway is shutting down"))
    ws = web.WebSocketResponse(
        max_msg_size=rt.config.limits.maxMessageBytes, heartbeat=20.0, autoping=True
    )
    out = _Outbox(request, ws, transport, rid)
    handle = ClientHandle(transport, source, out.send, out.close)
    conn = ConnectedClient(
        svc,
        handle,
        answers_before_logon=False,
        pre_logon_error=ErrorCode.UNAUTHENTICATED,
        api_key=api_key,
    )
    subject = None
    token = bearer(request)
    if token is not None:
        try:
            subject = await svc.admission.authenticate(conn.caller, token, request_id=rid)
        except Refusal as err:
            return error_response(err)
    refused = svc.clients.refusal(source, rt.config.limits, authenticated=subject is not None)
    if refused is not None:
        rt.metrics.connections_refused.labels(transport, refused).inc()
        return error_response(QrcError(ErrorCode.CORE_UNAVAILABLE, "Too many clients"))

    await ws.prepare(request)
    svc.clients.add(handle)
    try:
        if subject is not None:
            conn.log_on(subject)
            conn.announce()
        async with asyncio.timeout(None) as deadline:
            if subject is None:  # absolute: frames do not extend it
                logon_timeout = rt.config.limits.logonTimeoutSeconds
                deadline.reschedule(asyncio.get_running_loop().time() + logon_timeout)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT or msg.type == WSMsgType.BINARY:
                    rest = conn.handle_frame_now(msg.data)
                    if rest is not None:
                        await rest
                    if msg.type == WSMsgType.TEXT and conn.logged_on:
                        deadline.reschedule(None)
                elif msg.type == WSMsgType.ERROR:
                    break
    except TimeoutError:
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"logon timeout")
    finally:
        svc.clients.remove(handle)
        await conn.drain(5.0)
        await conn.close()
        await out.finish()
    return ws
