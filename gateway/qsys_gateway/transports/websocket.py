"""WebSocket transports, JSON-RPC both ways, pushing EngineStatus and AutoPoll.

`GET /v1/ws` is the gateway's own; `GET /qrc-public-api/v0` is the vendor's QRWC
path (what `@q-sys/qrwc` and the seeds' web panels dial on a Core), which also takes
the token from an `apiKey` field in each request. Both run the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from qsys_protocol.qrc.errors import ErrorCode, QrcError

from ..admission import Refusal
from ..client_registry import ClientHandle
from .connected import LOGON_TIMEOUT, ConnectedClient
from .responses import SERVICES, bearer, error_response, source_ip

log = logging.getLogger("qsys_gateway.websocket")

SEND_QUEUE = 256


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "ws", api_key=False)


async def qrwc_handler(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "qrwc", api_key=True)


async def _serve(request: web.Request, transport: str, *, api_key: bool) -> web.StreamResponse:
    svc = request.app[SERVICES]
    rt = svc.runtime
    rid: str = request["request_id"]
    source = source_ip(request)
    if rt.shutting_down:
        return error_response(QrcError(ErrorCode.CORE_UNAVAILABLE, "Gateway is shutting down"))
    if len(svc.clients) >= rt.config.limits.maxClients:
        return error_response(QrcError(ErrorCode.CORE_UNAVAILABLE, "Too many clients"))
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(SEND_QUEUE)
    background: set[asyncio.Task[Any]] = set()
    ws = web.WebSocketResponse(
        max_msg_size=rt.config.limits.maxMessageBytes, heartbeat=20.0, autoping=True
    )

    def send(message: dict[str, Any]) -> None:
        if ws.closed:
            return
        try:
            queue.put_nowait(orjson.dumps(message))
        except asyncio.QueueFull:
            log.warning("closing a WebSocket client that does not read", extra={"request_id": rid})
            writer.cancel()
            closer = asyncio.get_running_loop().create_task(
                ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"client too slow")
            )
            background.add(closer)
            closer.add_done_callback(background.discard)

    async def close() -> None:
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutting down")

    handle = ClientHandle(transport, source, send, close)
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
            subject = svc.admission.authenticate(conn.caller, token, request_id=rid)
        except Refusal as err:
            return error_response(err)

    await ws.prepare(request)

    async def write_loop() -> None:
        while True:
            data = await queue.get()
            if data is None:
                return
            await ws.send_str(data.decode())

    writer = asyncio.get_running_loop().create_task(write_loop())
    svc.clients.add(handle)
    try:
        if subject is not None:
            conn.log_on(subject)
        async with asyncio.timeout(None) as deadline:
            if subject is None:
                deadline.reschedule(asyncio.get_running_loop().time() + LOGON_TIMEOUT)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await conn.handle_frame(msg.data)
                    if conn.logged_on:
                        deadline.reschedule(None)
                elif msg.type == WSMsgType.BINARY:
                    await conn.handle_frame(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
    except TimeoutError:
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"logon timeout")
    finally:
        svc.clients.remove(handle)
        await conn.drain(5.0)
        await conn.close()
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(writer, 2.0)
        if not ws.closed:
            await ws.close()
    return ws
