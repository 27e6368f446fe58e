"""HTTP: `POST /v1/rpc`, `GET /v1/status`, probes, and the middleware every response passes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import ErrorCode, QrcError

from .. import __version__
from ..admission import Caller, Proof, Refusal
from ..connlimit import HttpConnections
from .common import HTTP_STATUS, Services, request_id
from .openapi import (
    GatewayStatus,
    HealthComponents,
    HealthResponse,
    ProbeResponse,
    StatusResponse,
    UpstreamStatus,
    document,
)
from .responses import (
    CORS_HEADERS,
    HSTS,
    HTTP_CONNECTIONS,
    REQUEST_ID,
    SECURITY_HEADERS,
    SERVICES,
    bearer,
    bearer_token,
    error_parts,
    error_response,
    json_response,
    source_ip,
)
from .websocket import qrwc_handler, websocket_handler

log = logging.getLogger("qsys_gateway.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, CORS, security headers, and no stack trace ever."""
    svc = request.app[SERVICES]
    rid = request_id(request.headers.get("X-Request-ID"))
    request[REQUEST_ID] = rid
    origin = request.headers.get("Origin")
    cors = svc.runtime.config.cors.allowedOrigins
    response: web.StreamResponse
    if origin is not None and origin not in cors:
        response = error_response(QrcError(ErrorCode.FORBIDDEN, "Origin not allowed"), status=403)
    elif origin is not None and request.method == "OPTIONS":
        response = web.Response(status=204)
    else:
        conns = request.app[HTTP_CONNECTIONS]
        conns.started(request.transport)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = _http_error(exc)
        except Exception:
            log.exception("unhandled error", extra={"request_id": rid})
            response = error_response(
                QrcError(ErrorCode.SERVER_ERROR, "Internal error"), status=500
            )
        finally:
            conns.finished(request.transport)
    h = response.headers
    if origin is not None and origin in cors:
        h["Access-Control-Allow-Origin"] = origin
        h.update(CORS_HEADERS)
    if not response.prepared:
        h["X-Request-ID"] = rid
        h.update(SECURITY_HEADERS)
        if request.secure:
            h.update((HSTS,))
    return response


def _http_error(exc: web.HTTPException) -> web.Response:
    code = ErrorCode.METHOD_NOT_FOUND if exc.status == 404 else ErrorCode.INVALID_REQUEST
    message = exc.reason or "Error"
    return json_response(
        jsonrpc.error_message(None, QrcError(code, message)),
        exc.status,
        {k: v for k, v in exc.headers.items() if k.lower() == "allow"},
    )


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    stream = request.content
    if stream.is_eof():  # the whole body arrived with the head: nothing to wait for
        body = stream.read_nowait(limit + 1)
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        # The whole body within the body timeout: `read(n)` returns what has arrived so
        # far, so a body split over several segments needs the loop.
        async with asyncio.timeout(request.app[HTTP_CONNECTIONS].body_timeout):
            while size <= limit:
                chunk = await request.content.read(limit + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except TimeoutError:
        raise web.HTTPRequestTimeout() from None
    if size > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
    return b"".join(chunks)


async def rpc(request: web.Request) -> web.Response:
    """One JSON-RPC call or batch. While the gateway drains, a request on a connection it
    accepted earlier is still answered (the Core link stays up until the drain ends;
    a Service can route to a terminating pod for a while under load), and the
    connection is closed after it so the client's next call reaches another pod."""
    resp = await _rpc(request)
    if request.app[SERVICES].runtime.shutting_down:
        resp.force_close()
    return resp


async def _rpc(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    rid: str = request[REQUEST_ID]
    caller = Caller("http", source_ip(request))
    conns = request.app[HTTP_CONNECTIONS]
    header = request.headers.get("Authorization", "")
    refused = await rpc_authenticate(svc, conns, request.transport, caller, header, rid)
    if refused is not None:
        return error_response(refused)
    body = await _read_body(request, svc.runtime.config.limits.maxMessageBytes)
    status, payload, headers = await rpc_call(svc, caller, rid, body)
    if payload is None:
        return web.Response(status=status)
    return json_response(payload, status, headers)


async def rpc_authenticate(
    svc: Services,
    conns: HttpConnections,
    transport: asyncio.BaseTransport | None,
    caller: Caller,
    header: str,
    rid: str,
) -> Refusal | None:
    """Who calls `/v1/rpc`: the connection keeps a token's match between its requests
    (`Admission.authenticate_kept`)."""
    kept = conns.kept(transport)
    conns.keep(transport, None)
    try:
        proof = await svc.admission.authenticate_kept(
            caller,
            header,
            bearer_token(header),
            kept if isinstance(kept, Proof) else None,
            request_id=rid,
        )
    except Refusal as err:
        return err
    conns.keep(transport, proof)
    return None


async def rpc_call(
    svc: Services, caller: Caller, rid: str, body: bytes
) -> tuple[int, Any, dict[str, str]]:
    """One `/v1/rpc` body, run: the status, the JSON body (None: no content) and headers."""
    try:
        payload = jsonrpc.decode_json(body)
    except jsonrpc.InvalidMessage as err:
        return error_parts(err)
    batch = isinstance(payload, list)
    calls = payload if batch else [payload]
    if batch and not calls:
        return error_parts(QrcError(ErrorCode.INVALID_REQUEST, "Invalid request: empty batch"))
    responses = await svc.admission.serve(caller, calls, rid)
    if isinstance(responses, Refusal):
        return error_parts(responses)
    answered = [r for r in responses if r is not None]
    if batch:
        return (200, answered, {}) if answered else (204, None, {})
    if not answered:
        return 204, None, {}
    resp = answered[0]
    status = 200
    error = resp.get("error")
    if error is not None:
        status = HTTP_STATUS.get(error.get("code", 0), 200)
    headers = {}
    if status in (429, 503):
        headers["Retry-After"] = "1"
    return status, resp, headers


async def status(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    rid: str = request[REQUEST_ID]
    try:
        await svc.admission.authenticate(
            Caller("http", source_ip(request)), bearer(request), request_id=rid, method="StatusGet"
        )
    except Refusal as err:
        return error_response(err)
    rt = svc.runtime
    up = rt.upstream
    body = StatusResponse(
        core=None,
        upstream=UpstreamStatus(up=up.up, activeHost=up.active_host, circuit=up.circuit_state),
        gateway=GatewayStatus(
            version=__version__,
            configGeneration=rt.rules.generation,
            clients=len(svc.clients),
            shuttingDown=rt.shutting_down,
        ),
    )
    # The Core's EngineStatus goes out as received: a Core may add fields or leave some out.
    return json_response({**body.model_dump(), "core": up.engine_status})


async def openapi(request: web.Request) -> web.Response:
    return json_response(document())


async def livez(request: web.Request) -> web.Response:
    return json_response(ProbeResponse(status="ok").model_dump())


READY_WAIT_S = 10.0
"""How long a starting pod stays unready while its first Core connection is made."""


async def readyz(request: web.Request) -> web.Response:
    """Ready when the pod can serve. A starting pod waits for its Core connection, at
    most READY_WAIT_S, so a rollout does not route calls to a pod that could only
    answer "no connection to the Core"; after that readiness does not follow the
    Core's health (a Core outage must not empty the Service of every gateway)."""
    svc = request.app[SERVICES]
    rt = svc.runtime
    if rt.shutting_down:
        return json_response(ProbeResponse(status="shutting down").model_dump(), 503)
    if not svc.core_seen:
        if rt.upstream.up:
            svc.core_seen = True
        elif time.monotonic() - svc.started < READY_WAIT_S:
            return json_response(ProbeResponse(status="connecting to the Core").model_dump(), 503)
    return json_response(ProbeResponse(status="ready").model_dump())


async def healthz(request: web.Request) -> web.Response:
    rt = request.app[SERVICES].runtime
    upstream = "up" if rt.upstream.up else "down"
    storage = "ok" if await rt.limiter.healthy() else "down"
    components = HealthComponents(upstream=upstream, config="ok", rateLimitStorage=storage)
    if rt.shutting_down:
        overall = "unhealthy"
    elif upstream == "up" and storage == "ok":
        overall = "healthy"
    else:
        overall = "degraded"
    body = HealthResponse(status=overall, components=components)
    return json_response(body.model_dump(), 503 if overall == "unhealthy" else 200)


def build_app(svc: Services, connections: HttpConnections) -> web.Application:
    app = web.Application(middlewares=[middleware], client_max_size=16 * 1024 * 1024 + 1024)
    app[SERVICES] = svc
    app[HTTP_CONNECTIONS] = connections
    app.router.add_post("/v1/rpc", rpc)
    app.router.add_get("/v1/ws", websocket_handler)
    app.router.add_get("/qrc-public-api/v0", qrwc_handler)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", healthz)
    return app
