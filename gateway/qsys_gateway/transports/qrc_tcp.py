"""Raw QRC over TCP for existing control systems: Logon with subject + token, then QRC as usual."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import ErrorCode, QrcError
from qsys_protocol.qrc.framing import FRAME_TOO_LARGE, FrameDecoder, encode_frame

from ..client_registry import ClientHandle
from .common import Services
from .connected import ConnectedClient

log = logging.getLogger("qsys_gateway.qrc_tcp")

IDLE_TIMEOUT = 60.0
"""Like a Core: a socket silent for this long is closed (clients send NoOp)."""
MAX_WRITE_BUFFER = 1024 * 1024
ADMIT_WAIT = 2.0
"""`qrcOnCoreLoss: close`: how long a new client waits for the Core before it is refused."""


async def _close(client: ClientHandle) -> None:
    await client.close()


class QrcServer:
    def __init__(self, svc: Services, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self.svc = svc
        self.host = host
        self.port = port
        self.tls = tls
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, ssl=self.tls, reuse_address=True
        )

    def core_changed(self, up: bool) -> None:
        """`qrcOnCoreLoss: close`: the Core was lost, so close every raw QRC client, as the
        Core's own sockets would close. Their sessions end; their groups go with them."""
        if up or self.svc.runtime.config.listen.qrcOnCoreLoss != "close":
            return
        loop = asyncio.get_running_loop()
        for client in list(self.svc.clients.clients):
            if client.transport == "qrc":
                task = loop.create_task(_close(client))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

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
        closing = asyncio.Event()
        # Replies are written once per event-loop pass (one send for all the
        # answers ready in that pass, not a syscall each).
        out: list[bytes] = []
        loop = asyncio.get_running_loop()

        def flush() -> None:
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
                closing.set()
                return
            writer.write(data)

        def send(message: dict[str, Any]) -> None:
            if writer.is_closing():
                return
            if not out:
                loop.call_soon(flush)
            out.append(encode_frame(message))

        async def close() -> None:
            flush()
            closing.set()
            if not writer.is_closing():
                writer.close()

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
        decoder = FrameDecoder(rt.config.limits.maxMessageBytes)
        svc.clients.add(handle)
        if rt.config.listen.qrcOnCoreLoss == "close" and not await rt.upstream.wait_up(ADMIT_WAIT):
            err = QrcError(ErrorCode.CORE_UNAVAILABLE, "Core unavailable")
            writer.write(encode_frame(jsonrpc.error_message(None, err)))
            svc.clients.remove(handle)
            return
        status = rt.upstream.engine_status
        if status is not None:
            send(jsonrpc.notification_message("EngineStatus", status))
        loop = asyncio.get_running_loop()
        # Absolute: bytes before the Logon (a space every few seconds) do not extend it.
        logon_deadline = loop.time() + rt.config.limits.logonTimeoutSeconds
        try:
            # One deadline, moved before each read, instead of a wait_for task per read.
            async with asyncio.timeout(None) as deadline:
                while not closing.is_set():
                    if conn.logged_on or by_source is not None:
                        deadline.reschedule(loop.time() + IDLE_TIMEOUT)
                    else:
                        deadline.reschedule(logon_deadline)
                    data = await reader.read(65536)
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
                        await conn.handle_frame(frame)
        except TimeoutError:
            log.info("closing an idle QRC client")
        finally:
            svc.clients.remove(handle)
            await conn.drain(5.0)
            await conn.close()
            flush()

    async def close_all(self, timeout: float) -> None:
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=timeout)
        for task in list(self._connections):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout)
