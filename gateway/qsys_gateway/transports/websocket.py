"""WebSocket transports, JSON-RPC both ways, pushing EngineStatus and AutoPoll.

`GET /v1/ws` is the gateway's own; `GET /qrc-public-api/v0` is the vendor's QRWC
path (what `@q-sys/qrwc` and the seeds' web panels dial on a Core), which also takes
the token from an `apiKey` field in each request. Both run the same code.

The upgrade is aiohttp's (its handshake checks and the 101 response, behind the
middleware's Origin check); then the socket is taken from aiohttp (`HttpConnections.
take_over`) and served by a `WsConnection`: frames read by `wsframes.FrameReader` as the
bytes arrive and handed to admission at once, replies framed by the gateway and written
once per event-loop pass. An idle client holds no aiohttp request, parser, queue or
task: its connection, its reader and one heartbeat timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http_websocket import WebSocketWriter
from aiohttp.web_request import BaseRequest

from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import ErrorCode, QrcError

from ..admission import Refusal
from ..client_registry import ClientHandle
from .common import Services
from .connected import ConnectedClient
from .inbound import Inbound, Rest
from .responses import (
    HTTP_CONNECTIONS,
    REQUEST_ID,
    SERVICES,
    bearer,
    error_response,
    source_ip,
)
from .wsframes import (
    BINARY,
    CLOSE,
    GOING_AWAY,
    NO_STATUS,
    NORMAL_CLOSURE,
    PING,
    POLICY_VIOLATION,
    PONG,
    TEXT,
    FrameReader,
    WsError,
    close_frame,
    close_reason,
    control_frame,
    text_frame_header,
)

log = logging.getLogger("qsys_gateway.websocket")

_CLOSERS: set[asyncio.Task[None]] = set()
"""Connections finishing (one set for all, not one per client)."""

HEARTBEAT = 20.0
"""A client silent this long is pinged (as aiohttp's `heartbeat=20` did) ..."""
PONG_WAIT = 10.0
"""... and its socket closed when it stays silent this much longer."""
CLOSE_WAIT = 5.0
"""After the gateway's close frame: how long the client has to answer it."""
SLOW_CLOSE_WAIT = 2.0
DRAIN_WAIT = 5.0


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "ws", api_key=False)


async def qrwc_handler(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "qrwc", api_key=True)


class _Held:
    """What aiohttp reads after the upgrade request until the socket is taken over (a
    client may send frames right behind its handshake): kept for the `WsConnection`."""

    __slots__ = ("chunks",)

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.chunks.append(bytes(data))
        return False, b""

    def feed_eof(self) -> None:
        pass


class _Upgrade(web.WebSocketResponse):
    """aiohttp's handshake and 101 response, without its WebSocket reader: the bytes
    after the upgrade go to `_Held`, and the socket to a `WsConnection`."""

    def __init__(self, held: _Held) -> None:
        # No compression: permessage-deflate would hold zlib state per client (hundreds
        # of KiB) for JSON-RPC messages of a few hundred bytes.
        super().__init__(compress=False, heartbeat=None, autoping=False)
        self._held = held

    def _post_start(
        self, request: BaseRequest, protocol: str | None, writer: WebSocketWriter
    ) -> None:
        request.protocol.set_parser(cast(Any, self._held))
        request.protocol.keep_alive(False)

    async def write_eof(self) -> None:  # type: ignore[override]
        """The socket is the `WsConnection`'s: aiohttp must not write a close frame."""


async def _serve(request: web.Request, transport: str, *, api_key: bool) -> web.StreamResponse:
    svc = request.app[SERVICES]
    rt = svc.runtime
    rid: str = request[REQUEST_ID]
    source = source_ip(request)
    if rt.shutting_down:
        return error_response(QrcError(ErrorCode.CORE_UNAVAILABLE, "Gateway is shutting down"))
    conn = WsConnection(svc, transport, source, rid, api_key=api_key)
    client = conn.client
    subject = None
    token = bearer(request)
    if token is not None:
        try:
            subject = await svc.admission.authenticate(client.caller, token, request_id=rid)
        except Refusal as err:
            return error_response(err)
    refused = svc.clients.refusal(source, rt.config.limits, authenticated=subject is not None)
    if refused is not None:
        rt.metrics.connections_refused.labels(transport, refused).inc()
        return error_response(QrcError(ErrorCode.CORE_UNAVAILABLE, "Too many clients"))

    held = _Held()
    ws = _Upgrade(held)
    await ws.prepare(request)
    sock = request.transport
    if sock is None or sock.is_closing() or not request.app[HTTP_CONNECTIONS].take_over(sock, conn):
        return ws
    # aiohttp lets go of the socket: without its transport it cannot close or write it
    protocol = request.protocol
    protocol.transport = None
    protocol.connection_lost(None)
    conn.start(sock, held.chunks, subject)
    return ws


class WsConnection(Inbound[bytes | str]):
    """One upgraded WebSocket, from the 101 to the close."""

    __slots__ = (
        "_beat",
        "_budget",
        "_close_sent",
        "_close_timer",
        "_dead",
        "_failed",
        "_finish",
        "_flush_due",
        "_logon_timer",
        "_lost",
        "_pending",
        "_pinged",
        "_pong_due",
        "_reader",
        "_seen",
        "_write_paused",
        "backlog",
        "client",
        "handle",
        "rid",
        "svc",
        "transport_name",
    )

    def __init__(
        self, svc: Services, transport_name: str, source: str, rid: str, *, api_key: bool
    ) -> None:
        super().__init__()
        self.svc = svc
        self.transport_name = transport_name
        self.rid = rid
        self.handle = handle = ClientHandle(transport_name, source, self.send, self.close)
        self.client = ConnectedClient(
            svc,
            handle,
            answers_before_logon=False,
            pre_logon_error=ErrorCode.UNAUTHENTICATED,
            api_key=api_key,
        )
        rt = svc.runtime
        self._reader: FrameReader | None = FrameReader(rt.config.limits.maxMessageBytes)
        self._budget = rt.send_budget
        self._pending: list[bytes] = []
        self.backlog = 0
        self._flush_due = False
        self._write_paused = False
        self._pong_due: bytes | None = None
        self._dead = False
        """Nothing more is sent (closed for being slow, or the socket is gone)."""
        self._close_sent = False
        self._failed: tuple[int, str] | None = None
        """The close code and reason of a frame the connection failed on."""
        self._finish: asyncio.Task[None] | None = None
        self._seen = 0.0
        self._pinged = 0.0
        self._beat: asyncio.TimerHandle | None = None
        self._logon_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._lost: asyncio.Future[None] | None = None

    def start(self, sock: asyncio.Transport, held: list[bytes], subject: Any) -> None:
        """The socket is this connection's from now on (the 101 is written)."""
        self.transport = sock
        svc = self.svc
        loop = asyncio.get_running_loop()
        self._seen = loop.time()
        self._beat = loop.call_later(HEARTBEAT, self._heartbeat)
        svc.clients.add(self.handle)
        if subject is not None:
            try:
                self.client.log_on(subject)
            except Refusal as full:
                self.send(jsonrpc.error_message(None, full))
                self._close(POLICY_VIOLATION, "too many clients")
                return
            self.client.announce()
        else:  # absolute: frames do not extend it
            timeout = svc.runtime.config.limits.logonTimeoutSeconds
            self._logon_timer = loop.call_later(timeout, self._logon_due)
        for data in held:
            self.data_received(data)
        if not self._paused and not sock.is_reading():
            sock.resume_reading()

    # ---- asyncio.Protocol (through the HTTP listener's guard) -------------------------

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            return
        self._seen = self._loop.time()
        try:
            frames = reader.feed(data)
        except WsError as err:
            self._read_frames(err.frames)
            self._fail(err.code, err.reason)
            return
        self._read_frames(frames)

    def _read_frames(self, frames: list[tuple[int, bytes | str]]) -> None:
        for opcode, payload in frames:
            if opcode in (TEXT, BINARY):
                if not self._close_sent:
                    self._arrived(payload)
            elif opcode == PING:
                self._pong(cast(bytes, payload))
            elif opcode == CLOSE:
                self._closed_by_client(cast(bytes, payload))
                return

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        pong, self._pong_due = self._pong_due, None
        if pong is not None and not self._close_sent:
            self._write(control_frame(PONG, pong))
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._dead = True
        self._reader = None
        for timer in (self._beat, self._logon_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._beat = self._logon_timer = self._close_timer = None
        self._release_queue()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._end()

    # ---- what the client sent ---------------------------------------------------------

    def _take(self, payload: bytes | str) -> Rest | None:
        rest = self.client.handle_frame_now(payload)
        if self._logon_timer is not None and self.client.logged_on:
            self._logged_on()
        return rest

    def _taken(self) -> None:
        if self._logon_timer is not None and self.client.logged_on:
            self._logged_on()

    def _taking(self) -> bool:
        return not self._close_sent

    def _readable(self) -> bool:
        return not self._dead

    def _logged_on(self) -> None:
        if self._logon_timer is not None:
            self._logon_timer.cancel()
            self._logon_timer = None

    def _logon_due(self) -> None:
        self._logon_timer = None
        if not self.client.logged_on:
            self._close(POLICY_VIOLATION, "logon timeout")

    def _heartbeat(self) -> None:
        """Ping after `HEARTBEAT` s of silence; close after `PONG_WAIT` s more of it."""
        self._beat = None
        if self._dead or self._close_sent:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._pinged and self._seen <= self._pinged:
            log.info("closing a WebSocket client that does not answer pings")
            self._abort()
            return
        silent = now - self._seen
        if silent >= HEARTBEAT:
            self._pinged = now
            self._write(control_frame(PING))
            self._beat = loop.call_later(PONG_WAIT, self._heartbeat)
            return
        self._pinged = 0.0
        self._beat = loop.call_later(HEARTBEAT - silent, self._heartbeat)

    def _closed_by_client(self, payload: bytes) -> None:
        """The client's close frame: answered (unless it answers the gateway's), then the
        socket is closed."""
        self._reader = None
        if not self._close_sent:
            code, _ = close_reason(payload)
            self._close_sent = True
            self._flush()
            self._write(close_frame(NORMAL_CLOSURE if code == NO_STATUS else code))
        self._dead = True
        self._release_queue()
        if self.transport is not None:
            self.transport.close()
        self._end()

    def _fail(self, code: int, reason: str) -> None:
        """A frame the connection cannot go on after: nothing more is read; the calls
        already read are answered (bounded, as at any end of the session), then the
        close frame goes out with `code` (`_finished`)."""
        self._reader = None
        self._failed = (code, reason)
        self._end()

    def _half_close(self) -> None:
        """After the close frame of a failed connection: FIN once what is pending is
        written; the socket closes when the client closes its side (or after
        `CLOSE_WAIT`). A full close here would make the kernel answer the client's close
        reply with a reset, which may destroy the close frame before the client reads it."""
        sock = self.transport
        if sock is None or sock.is_closing():
            return
        if sock.can_write_eof():
            sock.write_eof()
        else:  # TLS: close_notify after what is pending
            sock.close()

    # ---- what the gateway sends -------------------------------------------------------

    def _pong(self, payload: bytes) -> None:
        """Answer a ping, unless the gateway closes; while the client does not read (the
        socket's buffer is full) only the latest ping is answered, once it drains (RFC
        6455 5.5.3), so a client that pings without reading holds no growing buffer."""
        if self._close_sent:
            return
        if self._write_paused:
            self._pong_due = payload
            return
        self._write(control_frame(PONG, payload))

    def send(self, message: dict[str, Any]) -> None:
        if self._dead or self._close_sent:
            return
        data = orjson.dumps(message)
        size = len(data)
        if not self._budget.admits(self.backlog, size):
            self._close_slow()
            return
        self.backlog += size
        self._budget.take(size)
        self._pending.append(data)
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """End of the event-loop pass: the replies of the pass go out in one write, unless
        the socket's buffer is full (`pause_writing`); then they wait for it to drain."""
        self._flush_due = False
        pending = self._pending
        if self._write_paused or not pending:
            return
        sock = self.transport
        if self._dead or sock is None or sock.is_closing():
            self._release_queue()
            return
        if len(pending) == 1:
            data = pending[0]
            sent = len(data)
            sock.write(text_frame_header(sent) + data)
        else:
            sent = 0
            frames = []
            for data in pending:
                sent += len(data)
                frames.append(text_frame_header(len(data)))
                frames.append(data)
            sock.write(b"".join(frames))
        pending.clear()
        self.backlog -= sent
        self._budget.give(sent)

    def _write(self, frame: bytes) -> None:
        sock = self.transport
        if sock is not None and not sock.is_closing():
            sock.write(frame)

    def _release_queue(self) -> None:
        self._pending.clear()
        self._budget.give(self.backlog)
        self.backlog = 0

    def _close_slow(self) -> None:
        self._dead = True
        log.warning("closing a WebSocket client that does not read", extra={"request_id": self.rid})
        self.svc.runtime.metrics.slow_clients.labels(self.transport_name).inc()
        self._release_queue()
        self._close(POLICY_VIOLATION, "client too slow", wait=SLOW_CLOSE_WAIT)

    def _close(self, code: int, reason: str, *, wait: float = CLOSE_WAIT) -> None:
        """Send the close frame (after what is pending), end the session, and close the
        socket when the client answers or after `wait` seconds."""
        if self._close_sent or self.transport is None:
            return
        self._flush()
        self._close_sent = True
        self._write(close_frame(code, reason))
        self._close_timer = asyncio.get_running_loop().call_later(wait, self._abort)
        self._end()

    def _abort(self) -> None:
        self._close_timer = None
        if self.transport is not None:
            self.transport.abort()

    async def close(self) -> None:
        """Shutdown or a revoked credential: the close frame (1001), then the socket is
        closed at once (as aiohttp did; the client's answer is not waited for), and this
        waits until it is gone."""
        sock = self.transport
        if sock is None or self._lost is not None:
            return
        self._lost = asyncio.get_running_loop().create_future()
        self._close(GOING_AWAY, "gateway shutting down")
        sock.close()
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                await asyncio.shield(self._lost)
        except TimeoutError:
            self._abort()

    def _end(self) -> None:
        if self._finish is not None:
            return
        self._finish = task = asyncio.get_running_loop().create_task(self._finished())
        _CLOSERS.add(task)
        task.add_done_callback(_CLOSERS.discard)

    async def _finished(self) -> None:
        """The session ends: calls in flight are answered (bounded), the session and its
        change groups released; then the socket closes (a normal close if nobody closed
        it yet)."""
        self.svc.clients.remove(self.handle)
        if self._logon_timer is not None:
            self._logon_timer.cancel()
            self._logon_timer = None
        try:
            if self._worker is not None:
                with contextlib.suppress(Exception):  # its calls' errors were answered
                    async with asyncio.timeout(DRAIN_WAIT):
                        await asyncio.shield(self._worker)
            await self.client.drain(DRAIN_WAIT)
            await self.client.close()
        finally:
            self._flush()
            if not self._close_sent and not self._dead:
                self._close(*(self._failed or (NORMAL_CLOSURE, "")))
            if self._failed is not None and not self._dead:
                self._half_close()
