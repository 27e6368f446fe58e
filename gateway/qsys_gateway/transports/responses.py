"""What the HTTP and WebSocket handlers share: app keys, JSON responses, request facts."""

from __future__ import annotations

import math
from typing import Any

import orjson
from aiohttp import web

from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import ErrorCode, QrcError

from ..connlimit import HttpConnections
from .common import HTTP_STATUS, Services

SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
HTTP_CONNECTIONS: web.AppKey[HttpConnections] = web.AppKey("http_connections", HttpConnections)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error_response(
    err: QrcError, rid_in_body: Any = None, status: int | None = None
) -> web.Response:
    headers = {}
    retry = getattr(err, "retry_after", 0.0) or 0.0
    if err.code in (ErrorCode.RATE_LIMITED, ErrorCode.CORE_UNAVAILABLE):
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    return json_response(
        jsonrpc.error_message(rid_in_body, err),
        status or HTTP_STATUS.get(err.code, 200),
        headers,
    )


def source_ip(request: web.Request) -> str:
    return request.remote or "-"


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
