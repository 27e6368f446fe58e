"""Raw QRC over TCP for existing control systems: Logon with subject + token, then QRC as usual."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import ErrorCode, QrcError
from qsys_protocol.qrc.framing import FRAME_TOO_LARGE, FrameDecoder, encode_frame

from ..client_registry import ClientHandle
from .common import Services
from .connected import ConnectedClient, refusals

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


class QrcServer:
    def __init__(self, svc: Services, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self.svc = svc
        self.host = host
        self.port = port
        self.tls = tls
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._stoppers: dict[ClientHandle, Callable[[QrcError], None]] = {}
        self._idle: dict[asyncio.Timeout, float] = {}
        """Logged-on sockets waiting for data: their read's deadline, and when they go idle."""
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, ssl=self.tls, reuse_address=True
        )
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_idle())

    async def _sweep_idle(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(IDLE_SWEEP)
            now = loop.time()
            expired = [deadline for deadline, at in self._idle.items() if at <= now]
            for deadline in expired:
                del self._idle[deadline]
                deadline.reschedule(now)  # the read raises TimeoutError: closed as idle

    def core_changed(self, up: bool) -> None:
        """`qrcOnCoreLoss: close`: the Core was lost, so close every raw QRC client, as the
        Core's own sockets would close, once each call it sent is answered (-32050 for what
        needed the Core). Their sessions end; their groups go with them."""
        if up or self.svc.runtime.config.listen.qrcOnCoreLoss != "close":
            return
        for stop in list(self._stoppers.values()):
            stop(CORE_LOST)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2.0)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        svc = self.svc
        rt = svc.runtime
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else "-"
        # Admission by address is a logon: such a client (which may send nothing but NoOp
        # between button presses) has no logon deadline and counts as logged on. Its
        # subject is still taken only at its first call, so a Logon first keeps its token's.
        by_source = rt.rules.authenticator.by_source(source)
        refused = (
            "shutting_down"
            if rt.shutting_down
            else svc.clients.refusal(source, rt.config.limits, authenticated=by_source is not None)
        )
        if refused is not None:
            rt.metrics.connections_refused.labels("qrc", refused).inc()
            err = QrcError(ErrorCode.CORE_UNAVAILABLE, "Too many clients")
            writer.write(encode_frame(jsonrpc.error_message(None, err)))
            return
        closing = False  # a flag, not an Event: nothing waits on it
        ending: QrcError | None = None
        """Why the gateway closes this socket: the error unanswered calls get."""
        reading: asyncio.Timeout | None = None
        # Replies are written once per event-loop pass (one send for all the
        # answers ready in that pass, not a syscall each).
        out: list[bytes] = []
        loop = asyncio.get_running_loop()

        def flush() -> None:
            nonlocal closing
            if not out:
                return
            data = b"".join(out)
            out.clear()
            if writer.is_closing():
                return
            if writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                log.warning("closing a QRC client that does not read")
                rt.metrics.slow_clients.labels("qrc").inc()
                writer.transport.abort()
                closing = True
                return
            writer.write(data)

        def send(message: dict[str, Any]) -> None:
            if writer.is_closing():
                return
            if not out:
                loop.call_soon(flush)
            out.append(encode_frame(message))

        def stop(err: QrcError) -> None:
            """Close once the calls in flight are answered and what the client already
            sent is answered with `err` (the socket closes after that, in `_serve`)."""
            nonlocal ending, closing
            if ending is None:
                ending = err
            closing = True
            if reading is not None:
                reading.reschedule(loop.time())  # wake the read; a frame in hand finishes

        async def close() -> None:
            stop(CLOSING)

        handle = ClientHandle(
            "qrc", source, send, close, by_source.name if by_source is not None else None
        )
        conn = ConnectedClient(
            svc,
            handle,
            answers_before_logon=True,
            pre_logon_error=ErrorCode.LOGON_REQUIRED,
            source_bound=True,
        )
        limits = rt.config.limits
        decoder = FrameDecoder(limits.maxMessageBytes)
        svc.clients.add(handle)
        if rt.config.listen.qrcOnCoreLoss == "close" and not await rt.upstream.wait_up(ADMIT_WAIT):
            # what an unreachable Core's socket would do, but every call sent meanwhile (a
            # Logon above all) is answered under its id first
            svc.clients.remove(handle)
            err = QrcError(ErrorCode.CORE_UNAVAILABLE, "Core unavailable")
            if not await self._answer_unread(reader, decoder, send, err, limits.maxBatchCalls):
                send(jsonrpc.error_message(None, err))
            flush()
            return
        self._stoppers[handle] = stop
        status = rt.upstream.engine_status
        if status is not None:
            send(jsonrpc.notification_message("EngineStatus", status))
        loop = asyncio.get_running_loop()
        # Absolute: bytes before the Logon (a space every few seconds) do not extend it.
        logon_deadline = loop.time() + rt.config.limits.logonTimeoutSeconds
        try:
            # One deadline per socket, instead of a wait_for task per read: a timer
            # until the Logon, then the server's idle sweep.
            async with asyncio.timeout(None) as deadline:
                while not closing:
                    if conn.logged_on or by_source is not None:
                        self._idle[deadline] = loop.time() + IDLE_TIMEOUT
                    else:
                        deadline.reschedule(logon_deadline)
                    reading = deadline
                    data = await reader.read(65536)
                    reading = None
                    self._idle.pop(deadline, None)
                    deadline.reschedule(None)
                    if not data:
                        return
                    for frame in decoder.feed(data):
                        if frame is FRAME_TOO_LARGE:
                            err = QrcError(
                                ErrorCode.INVALID_REQUEST, "Invalid request: message too large"
                            )
                            send(jsonrpc.error_message(None, err))
                            continue
                        assert isinstance(frame, bytes)
                        if ending is not None:
                            for refusal in refusals(frame, ending, limits.maxBatchCalls):
                                send(refusal)
                            continue
                        await conn.handle_frame(frame)
        except TimeoutError:
            if ending is None:
                log.info("closing an idle QRC client")
        finally:
            reading = None
            self._idle.pop(deadline, None)
            self._stoppers.pop(handle, None)
            svc.clients.remove(handle)
            await conn.drain(5.0)
            await conn.close()
            if ending is not None and not writer.is_closing():
                await self._answer_unread(reader, decoder, send, ending, limits.maxBatchCalls)
            flush()

    @staticmethod
    async def _answer_unread(
        reader: asyncio.StreamReader,
        decoder: FrameDecoder,
        send: Callable[[dict[str, Any]], None],
        err: QrcError,
        max_batch: int,
    ) -> bool:
        """Read what the client sent that was not run yet (a short, bounded wait) and
        answer each request in it with `err`. True when some request was answered."""
        answered = False
        taken = 0
        with contextlib.suppress(TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            async with asyncio.timeout(UNREAD_WAIT):
                while taken < UNREAD_BYTES:
                    data = await reader.read(65536)
                    if not data:
                        break
                    taken += len(data)
                    for frame in decoder.feed(data):
                        if isinstance(frame, bytes):
                            for refusal in refusals(frame, err, max_batch):
                                send(refusal)
                                answered = True
        return answered

    async def close_all(self, timeout: float) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=timeout)
        for task in list(self._connections):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout)
