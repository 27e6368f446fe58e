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

SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
)
"""On every response the gateway makes (with the request id, and HSTS over TLS)."""
HSTS = ("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
CORS_HEADERS = (
    ("Vary", "Origin"),
    ("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS"),
    (
        "Access-Control-Allow-Headers",
        "Authorization, Content-Type, X-Request-ID, Mcp-Session-Id, MCP-Protocol-Version",
    ),
    ("Access-Control-Expose-Headers", "X-Request-ID, Retry-After, Mcp-Session-Id"),
    ("Access-Control-Max-Age", "600"),
)
"""Beside `Access-Control-Allow-Origin` for an allowed Origin."""

SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
HTTP_CONNECTIONS: web.AppKey[HttpConnections] = web.AppKey("http_connections", HttpConnections)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error_parts(
    err: QrcError, rid_in_body: Any = None, status: int | None = None
) -> tuple[int, Any, dict[str, str]]:
    """An error's HTTP status, JSON-RPC error body and headers (Retry-After)."""
    headers = {}
    retry = getattr(err, "retry_after", 0.0) or 0.0
    if err.code in (ErrorCode.RATE_LIMITED, ErrorCode.CORE_UNAVAILABLE):
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    body = jsonrpc.error_message(rid_in_body, err)
    return status or HTTP_STATUS.get(err.code, 200), body, headers


def error_response(
    err: QrcError, rid_in_body: Any = None, status: int | None = None
) -> web.Response:
    code, body, headers = error_parts(err, rid_in_body, status)
    return json_response(body, code, headers)


def source_ip(request: web.Request) -> str:
    return request.remote or "-"


def bearer(request: web.Request) -> str | None:
    return bearer_token(request.headers.get("Authorization", ""))


def bearer_token(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
