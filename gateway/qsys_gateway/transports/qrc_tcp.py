"""Raw QRC over TCP for existing control systems: Logon with subject + token, then QRC as usual.

Each socket is an `asyncio.Protocol` (`QrcConnection`): frames are cut on NUL as the
bytes arrive and handed to `ConnectedClient.handle_frame` (the admission front door) by
a task that exists only while frames wait; an idle logged-on client holds no task, no
stream reader or writer and no timer (one sweep a second checks every socket's idle
time)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any, cast

from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import ErrorCode, QrcError
from qsys_protocol.qrc.framing import FRAME_TOO_LARGE, Frame, FrameDecoder, encode_frame

from ..client_registry import ClientHandle
from .common import Services
from .connected import ConnectedClient, refusals
from .inbound import Inbound, Rest

log = logging.getLogger("qsys_gateway.qrc_tcp")

IDLE_TIMEOUT = 60.0
"""Like a Core: a socket silent for this long is closed (clients send NoOp)."""
IDLE_SWEEP = 1.0
"""How often logged-on sockets are checked for `IDLE_TIMEOUT`: one sweep for every
socket instead of a timer each, moved on every read."""
MAX_WRITE_BUFFER = 1024 * 1024
ADMIT_WAIT = 2.0
"""`qrcOnCoreLoss: close`: how long a new client waits for the Core before it is refused."""
UNREAD_WAIT = 0.05
"""Closing a socket: how long to read what the client already sent, to answer it."""
UNREAD_BYTES = 1024 * 1024

CORE_LOST = QrcError(ErrorCode.CORE_UNAVAILABLE, "Core unavailable: the connection to it was lost")
CLOSING = QrcError(ErrorCode.CORE_UNAVAILABLE, "Connection closing")
TOO_LARGE = QrcError(ErrorCode.INVALID_REQUEST, "Invalid request: message too large")


class QrcServer:
    def __init__(self, svc: Services, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self.svc = svc
        self.host = host
        self.port = port
        self.tls = tls
        self._server: asyncio.Server | None = None
        self.connections: set[QrcConnection] = set()
        """Open sockets, until each has finished closing."""
        self.admitted: set[QrcConnection] = set()
        """Sockets past the admission wait (`qrcOnCoreLoss: close` closes these)."""
        self.idle: dict[QrcConnection, float] = {}
        """Logged-on sockets: when each goes idle (moved on every read)."""
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: QrcConnection(self), self.host, self.port, ssl=self.tls, reuse_address=True
        )
        self._sweeper = loop.create_task(self._sweep_idle())

    async def _sweep_idle(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(IDLE_SWEEP)
            now = loop.time()
            for conn in [c for c, at in self.idle.items() if at <= now]:
                del self.idle[conn]
                conn.idle_out()

    def core_changed(self, up: bool) -> None:
        """`qrcOnCoreLoss: close`: the Core was lost, so close every raw QRC client, as the
        Core's own sockets would close, once each call it sent is answered (-32050 for what
        needed the Core). Their sessions end; their groups go with them."""
        if up or self.svc.runtime.config.listen.qrcOnCoreLoss != "close":
            return
        for conn in list(self.admitted):
            conn.stop(CORE_LOST)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close_all(self, timeout: float) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        closing = {c.finishing for c in self.connections if c.finishing is not None}
        if closing:
            await asyncio.wait(closing, timeout=timeout)
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await self._server.wait_closed()


class QrcConnection(Inbound[Frame]):
    """One raw QRC socket, from accept to close."""

    __slots__ = (
        "_admit_task",
        "_decoder",
        "_ending",
        "_finish",
        "_flush_due",
        "_held",
        "_late_answers",
        "_logon_timer",
        "_out",
        "_unread",
        "by_source",
        "client",
        "handle",
        "server",
    )

    def __init__(self, server: QrcServer) -> None:
        super().__init__()
        self.server = server
        self.handle: ClientHandle | None = None
        self.client: ConnectedClient | None = None
        self.by_source: str | None = None
        self._decoder: FrameDecoder | None = None
        self._out: list[bytes] = []
        self._flush_due = False
        self._ending: QrcError | None = None
        """Why the gateway closes this socket: the error unanswered calls get."""
        self._finish: asyncio.Task[None] | None = None
        """Closing: set once, when the socket is done (EOF, stop, timeout, lost)."""
        self._unread = 0
        """Closing with `_ending`: bytes still to read and answer with it (else ignored)."""
        self._late_answers = 0
        self._logon_timer: asyncio.TimerHandle | None = None
        self._admit_task: asyncio.Task[None] | None = None
        self._held: list[bytes] | None = None
        """What arrived while admission waits for the Core (up to `UNREAD_BYTES`)."""

    @property
    def finishing(self) -> asyncio.Task[None] | None:
        """The task closing this socket, once it is closing."""
        return self._finish

    # ---- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = sock = cast(asyncio.Transport, transport)
        server = self.server
        svc = server.svc
        rt = svc.runtime
        peer = sock.get_extra_info("peername")
        source = str(peer[0]) if peer else "-"
        # Admission by address is a logon: such a client (which may send nothing but NoOp
        # between button presses) has no logon deadline and counts as logged on. Its
        # subject is still taken only at its first call, so a Logon first keeps its token's.
        by_source = rt.rules.authenticator.by_source(source)
        self.by_source = by_source.name if by_source is not None else None
        refused = (
            "shutting_down"
            if rt.shutting_down
            else svc.clients.refusal(source, rt.config.limits, authenticated=by_source is not None)
        )
        if refused is not None:
            rt.metrics.connections_refused.labels("qrc", refused).inc()
            err = QrcError(ErrorCode.CORE_UNAVAILABLE, "Too many clients")
            sock.write(encode_frame(jsonrpc.error_message(None, err)))
            sock.close()
            return
        server.connections.add(self)
        self.handle = handle = ClientHandle("qrc", source, self.send, self.close, self.by_source)
        self.client = ConnectedClient(
            svc,
            handle,
            answers_before_logon=True,
            pre_logon_error=ErrorCode.LOGON_REQUIRED,
            source_bound=True,
        )
        self._decoder = FrameDecoder(rt.config.limits.maxMessageBytes)
        svc.clients.add(handle)
        if rt.config.listen.qrcOnCoreLoss == "close" and not rt.upstream.up:
            sock.pause_reading()
            self._paused = True
            self._admit_task = asyncio.get_running_loop().create_task(self._admit_when_up())
            return
        self._admit()

    def data_received(self, data: bytes) -> None:
        decoder = self._decoder
        if decoder is None:
            return
        if self._finish is not None:
            self._answer_late(data)
            return
        if self._admit_task is not None:
            if self._queued + len(data) <= UNREAD_BYTES:
                self._queued += len(data)
                self._held = [*(self._held or ()), data]
            return
        if self.client is not None and (self.client.logged_on or self.by_source is not None):
            self.server.idle[self] = self._loop.time() + IDLE_TIMEOUT
        for frame in decoder.feed(data):
            self._arrived(frame)

    def eof_received(self) -> bool:
        """The client sent all it will: its calls are still answered (half-close)."""
        self._end()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    # ---- what the gateway sends -------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        sock = self.transport
        if sock is None or sock.is_closing():
            return
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush)
        self._out.append(encode_frame(message))

    def _flush(self) -> None:
        """Replies are written once per event-loop pass (one send for all the answers
        ready in that pass, not a syscall each)."""
        self._flush_due = False
        out = self._out
        if not out:
            return
        data = b"".join(out)
        out.clear()
        sock = self.transport
        if sock is None or sock.is_closing():
            return
        if sock.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("closing a QRC client that does not read")
            self.server.svc.runtime.metrics.slow_clients.labels("qrc").inc()
            sock.abort()
            self._end()
            return
        sock.write(data)

    def stop(self, err: QrcError) -> None:
        """Close once the calls in flight are answered and what the client already sent
        is answered with `err`."""
        if self._ending is None:
            self._ending = err
        self._end()

    async def close(self) -> None:
        self.stop(CLOSING)

    def idle_out(self) -> None:
        """The idle sweep found this socket silent for `IDLE_TIMEOUT`."""
        if self._worker is not None:  # busy with what it sent: not idle
            self.server.idle[self] = self._loop.time() + IDLE_TIMEOUT
            return
        if self._ending is None:
            log.info("closing an idle QRC client")
        self._end()

    def abort(self) -> None:
        for task in (self._worker, self._finish, self._admit_task):
            if task is not None:
                task.cancel()
        if self.transport is not None:
            self.transport.abort()
        self.server.connections.discard(self)

    # ---- inside -----------------------------------------------------------------------

    async def _admit_when_up(self) -> None:
        """`qrcOnCoreLoss: close` and the Core is down: what an unreachable Core's socket
        would do after `ADMIT_WAIT`, but every call sent meanwhile (a Logon above all) is
        answered under its id first."""
        rt = self.server.svc.runtime
        up = await rt.upstream.wait_up(ADMIT_WAIT)
        self._admit_task = None
        held, self._held = self._held or [], None
        self._queued = 0
        if self._finish is not None:
            return
        if up:
            self._admit()
            for data in held:
                self.data_received(data)
            return
        self._ending = QrcError(ErrorCode.CORE_UNAVAILABLE, "Core unavailable")
        self._unread = UNREAD_BYTES
        for data in held:
            self._answer_late(data)
        self._end(refuse_all=True)

    def _admit(self) -> None:
        server, client = self.server, self.client
        assert client is not None
        assert self.transport is not None
        rt = server.svc.runtime
        server.admitted.add(self)
        status = rt.upstream.engine_status
        if status is not None:
            self.send(jsonrpc.notification_message("EngineStatus", status))
        loop = asyncio.get_running_loop()
        if self.by_source is not None:
            server.idle[self] = loop.time() + IDLE_TIMEOUT
        else:
            # absolute: bytes before the Logon (a space every few seconds) do not extend it
            timeout = rt.config.limits.logonTimeoutSeconds
            self._logon_timer = loop.call_later(timeout, self._logon_due)
        if self._paused:
            self._paused = False
            self.transport.resume_reading()

    def _logon_due(self) -> None:
        self._logon_timer = None
        if self.client is None or self.client.logged_on or self.by_source is not None:
            return
        if self._worker is not None:  # a Logon in hand is finished first
            self._logon_timer = asyncio.get_running_loop().call_later(0.1, self._logon_due)
            return
        self._end()

    def _take(self, frame: Frame) -> Rest | None:
        """One received frame to admission, as far as it goes without waiting: None when
        done, else the rest, to await before the next frame. Closing, the frame is
        refused with the closing error."""
        if frame is FRAME_TOO_LARGE:
            self.send(jsonrpc.error_message(None, TOO_LARGE))
            return None
        assert isinstance(frame, bytes)
        client = self.client
        assert client is not None
        if self._ending is not None:
            limit = self.server.svc.runtime.config.limits.maxBatchCalls
            for refusal in refusals(frame, self._ending, limit):
                self.send(refusal)
            return None
        if self._finish is not None and not self._answers_late():
            return None  # the client went: nothing to answer
        rest = client.handle_frame_now(frame)
        if self._logon_timer is not None and client.logged_on:
            self._logged_on()
        return rest

    def _taken(self) -> None:
        if self._logon_timer is not None and self.client is not None and self.client.logged_on:
            self._logged_on()

    def _readable(self) -> bool:
        return self._finish is None

    def _logged_on(self) -> None:
        if self._logon_timer is not None:
            self._logon_timer.cancel()
            self._logon_timer = None
        self.server.idle[self] = self._loop.time() + IDLE_TIMEOUT

    def _answers_late(self) -> bool:
        """Closing: whether the socket can still carry answers."""
        return self.transport is not None and not self.transport.is_closing()

    def _answer_late(self, data: bytes) -> None:
        """Bytes read while closing: requests in them are answered with `_ending` (up to
        `UNREAD_BYTES`); otherwise ignored."""
        if self._ending is None or self._unread <= 0 or self._decoder is None:
            return
        self._unread -= len(data)
        limit = self.server.svc.runtime.config.limits.maxBatchCalls
        for frame in self._decoder.feed(data):
            if isinstance(frame, bytes):
                for refusal in refusals(frame, self._ending, limit):
                    self.send(refusal)
                    self._late_answers += 1

    def _end(self, *, refuse_all: bool = False) -> None:
        if self._finish is not None or self.client is None:
            return
        self._finish = asyncio.get_running_loop().create_task(self._close(refuse_all))

    async def _close(self, refuse_all: bool) -> None:
        """Answer what is in flight, end the session, answer what the client sent
        meanwhile (when the gateway closes it), close the socket."""
        server, client, handle = self.server, self.client, self.handle
        assert client is not None
        assert handle is not None
        if self._logon_timer is not None:
            self._logon_timer.cancel()
            self._logon_timer = None
        server.idle.pop(self, None)
        server.admitted.discard(self)
        server.svc.clients.remove(handle)
        try:
            if self._worker is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5.0):
                        await asyncio.shield(self._worker)
            await client.drain(5.0)
            await client.close()
            sock = self.transport
            if self._ending is not None and sock is not None and not sock.is_closing():
                # read what the client sent that was not run yet (a short, bounded wait)
                # and answer each request in it
                self._unread = UNREAD_BYTES
                if self._paused:
                    self._paused = False
                    sock.resume_reading()
                await asyncio.sleep(UNREAD_WAIT)
                self._unread = 0
                if refuse_all and not self._late_answers:
                    self.send(jsonrpc.error_message(None, self._ending))
            self._flush()
        finally:
            sock = self.transport
            if sock is not None:
                sock.close()
            server.connections.discard(self)
