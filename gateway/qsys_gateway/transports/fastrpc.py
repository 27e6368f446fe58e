"""`POST /v1/rpc` on keep-alive connections without aiohttp's request machinery.

Every HTTP connection starts here (`FastRpc`, behind the listener's guard). A request
head that is exactly what a JSON-RPC client sends — `POST /v1/rpc HTTP/1.1`, header
names that are tokens, one decimal Content-Length, no Transfer-Encoding, Expect or
Upgrade, no repeated header that matters — is served here: the same middleware steps
(request id, Origin check and CORS, security headers), the same `rpc_authenticate` /
`rpc_call` as aiohttp's `/v1/rpc` handler, the same size and time limits. Anything else
(another path or method, HTTP/1.0, chunked bodies, no Host, a head that is not complete
within `MAX_HEAD` bytes or whose first bytes cannot start such a request, or anything
unusual) is handed, with every byte from the start of that
request, to aiohttp, which keeps the connection from then on. The decision is made
between requests only, so no byte is parsed by both.

With tracing on, every connection goes to aiohttp (its instrumentation makes the HTTP
server span).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, NamedTuple, Protocol, cast

import orjson

from qsys_protocol.qrc.errors import ErrorCode, QrcError

from ..admission import Caller
from ..connlimit import HttpConnections
from .common import Services, request_id
from .http import rpc_authenticate, rpc_call
from .responses import CORS_HEADERS, HSTS, SECURITY_HEADERS, error_parts

log = logging.getLogger("qsys_gateway.http")

MAX_HEAD = 8190
"""A longer head goes to aiohttp, whose own line and field limits then apply."""
MAX_FIELDS = 100
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
"""Bytes aiohttp refuses in a header value (HTAB, SP, VCHAR and obs-text pass)."""
_LINE = b"POST /v1/rpc HTTP/1.1"
_SINGLE = frozenset(
    {
        b"authorization",
        b"content-length",
        b"connection",
        b"host",
        b"origin",
        b"x-request-id",
        b"content-type",
    }
)
_ELSEWHERE = (b"transfer-encoding", b"expect", b"upgrade")
_REASONS = {408: "Request Timeout", 413: "Request Entity Too Large"}
"""The messages aiohttp's errors carry (`http._http_error`)."""
_SECURITY = "".join(f"{k}: {v}\r\n" for k, v in SECURITY_HEADERS).encode()
_CORS = "".join(f"{k}: {v}\r\n" for k, v in CORS_HEADERS).encode()
_HSTS = f"{HSTS[0]}: {HSTS[1]}\r\n".encode()


class Guard(Protocol):
    """The listener's guard (`connlimit`): hands the connection to aiohttp."""

    def to_aiohttp(self, data: bytes) -> None: ...


class Head(NamedTuple):
    length: int
    authorization: str
    origin: str | None
    request_id: str | None
    close: bool


def _may_be_rpc(start: bytes | bytearray) -> bool:
    """Whether an incomplete head may still become one `parse_head` serves."""
    line = _LINE + b"\r\n"
    return line.startswith(start[: len(line)]) and start.count(b"\n") == start.count(b"\r\n")


def parse_head(head: bytes) -> Head | None:
    """A request head (without its final blank line) if it is one `FastRpc` serves."""
    lines = head.split(b"\r\n")
    if lines[0] != _LINE or len(lines) > MAX_FIELDS + 1:
        return None
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name) or _CTL.search(value):
            return None
        key = name.lower()
        if key in fields and key in _SINGLE:
            return None
        fields[key] = value.strip(b" \t")
    if b"host" not in fields or any(key in fields for key in _ELSEWHERE):
        return None
    length = fields.get(b"content-length")
    if length is None or not length.isdigit() or len(length) > 15:
        return None
    connection = fields.get(b"connection", b"").lower()
    origin = fields.get(b"origin")
    rid = fields.get(b"x-request-id")
    return Head(
        int(length),
        fields.get(b"authorization", b"").decode("utf-8", "surrogateescape"),
        origin.decode("utf-8", "surrogateescape") if origin is not None else None,
        rid.decode("utf-8", "surrogateescape") if rid is not None else None,
        any(token.strip() == b"close" for token in connection.split(b",")),
    )


_date = ("", 0)


def _http_date() -> str:
    global _date
    now = int(time.time())
    if _date[1] != now:
        _date = (formatdate(now, usegmt=True), now)
    return _date[0]


class FastRpc(asyncio.Protocol):
    """One HTTP connection while its requests are `POST /v1/rpc`."""

    __slots__ = (
        "_body_left",
        "_body_timer",
        "_body_wait",
        "_buf",
        "_busy",
        "_conns",
        "_discard",
        "_guard",
        "_lost",
        "_paused",
        "_secure",
        "_source",
        "_svc",
        "transport",
    )

    def __init__(self, svc: Services, conns: HttpConnections, guard: Guard) -> None:
        self._svc = svc
        self._conns = conns
        self._guard = guard
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._busy = False
        """A request is being served: bytes after it wait in `_buf`."""
        self._body_wait: asyncio.Future[None] | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_left = 0
        """Bytes of the request's body not taken from the socket yet (refused requests)."""
        self._discard = 0
        """Lingering close: bytes of a refused body still to read and drop."""
        self._paused = False
        self._lost = False
        self._secure = False
        self._source = "-"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._source = str(peer[0]) if peer else "-"
        self._secure = transport.get_extra_info("sslcontext") is not None

    def data_received(self, data: bytes) -> None:
        if self._discard:
            self._discard -= len(data)
            if self._discard <= 0 and self.transport is not None:
                self.transport.close()
            return
        buf = self._buf
        buf += data
        if not self._busy:
            self._next()
            return
        wait = self._body_wait
        if wait is not None and not wait.done():
            wait.set_result(None)
        limit = self._svc.runtime.config.limits.maxMessageBytes + MAX_HEAD
        if len(buf) > limit and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        wait = self._body_wait
        if wait is not None and not wait.done():
            wait.set_result(None)
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _next(self) -> None:
        """Between requests: serve the next one buffered, or hand the connection over."""
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0 or end > MAX_HEAD:
            if end > MAX_HEAD or len(buf) > MAX_HEAD or not _may_be_rpc(buf):
                self._hand_over()  # aiohttp answers at once what cannot be one
            return
        head = parse_head(bytes(buf[:end]))
        if head is None:
            self._hand_over()
            return
        del buf[: end + 4]
        self._body_left = head.length
        self._busy = True
        self._conns.started(self.transport)
        asyncio.get_running_loop().create_task(self._serve(head))

    def _hand_over(self) -> None:
        data = bytes(self._buf)
        self._buf.clear()
        self._guard.to_aiohttp(data)

    async def _serve(self, head: Head) -> None:
        svc = self._svc
        rid = request_id(head.request_id)
        cors = svc.runtime.config.cors.allowedOrigins
        close = head.close
        origin = head.origin
        try:
            if origin is not None and origin not in cors:
                status, body, headers = error_parts(
                    QrcError(ErrorCode.FORBIDDEN, "Origin not allowed"), status=403
                )
                close = close or not self._skip_body(head.length)
            else:
                status, body, headers, unread = await self._answer(head, rid)
                close = close or unread
        except Exception:
            log.exception("unhandled error", extra={"request_id": rid})
            status, body, headers = error_parts(
                QrcError(ErrorCode.SERVER_ERROR, "Internal error"), status=500
            )
            close = True
        close = close or svc.runtime.shutting_down
        self._respond(status, body, headers, rid, origin if origin in cors else None, close)
        self._conns.finished(self.transport)
        self._busy = False
        sock = self.transport
        if sock is None or self._lost:
            return
        if close:
            self._close()
            return
        if self._paused:
            self._paused = False
            sock.resume_reading()
        if self._buf:
            self._next()

    def _close(self) -> None:
        """After a response with `Connection: close`. When the client is still sending a
        body the gateway refused (401, 403, 413), that body is read and dropped first
        (within the body timeout), as aiohttp's lingering close does: closing with unread
        bytes makes the kernel reset the connection, and a client still writing its body
        (`http.client`, `requests`) then fails with a broken pipe instead of reading
        the answer."""
        sock = self.transport
        assert sock is not None
        left = self._body_left - len(self._buf)
        if left <= 0:
            sock.close()
            return
        self._buf.clear()
        self._discard = left
        self._body_timer = asyncio.get_running_loop().call_later(
            self._conns.body_timeout, sock.close
        )
        if self._paused:
            self._paused = False
            sock.resume_reading()

    async def _answer(self, head: Head, rid: str) -> tuple[int, Any, dict[str, str], bool]:
        """The response, and whether the body was left unread (the connection closes)."""
        svc = self._svc
        caller = Caller("http", self._source)
        refused = await rpc_authenticate(
            svc, self._conns, self.transport, caller, head.authorization, rid
        )
        if refused is not None:
            return (*error_parts(refused), not self._skip_body(head.length))
        limit = svc.runtime.config.limits.maxMessageBytes
        if head.length > limit:
            err = QrcError(ErrorCode.INVALID_REQUEST, _REASONS[413])
            return (*error_parts(err, status=413), True)
        body = await self._body(head.length)
        if body is None:
            err = QrcError(ErrorCode.INVALID_REQUEST, _REASONS[408])
            return (*error_parts(err, status=408), True)
        return (*await rpc_call(svc, caller, rid, body), False)

    def _skip_body(self, length: int) -> bool:
        """Drop a body that is not read; False when it has not all arrived."""
        if len(self._buf) < length:
            return False
        del self._buf[:length]
        self._body_left = 0
        return True

    async def _body(self, length: int) -> bytes | None:
        """The body, once it is all here (None: not within the body timeout)."""
        buf = self._buf
        if len(buf) < length:
            loop = asyncio.get_running_loop()
            timeout = self._conns.body_timeout
            self._body_timer = loop.call_later(timeout, self._body_late)
            try:
                while len(buf) < length and not self._lost and self._body_timer is not None:
                    self._body_wait = loop.create_future()
                    await self._body_wait
            finally:
                self._body_wait = None
                if self._body_timer is not None:
                    self._body_timer.cancel()
                    self._body_timer = None
            if len(buf) < length:
                self._body_left = 0  # too slow, or gone: no lingering for it
                return None
        body = bytes(buf[:length])
        del buf[:length]
        self._body_left = 0
        return body

    def _body_late(self) -> None:
        self._body_timer = None
        wait = self._body_wait
        if wait is not None and not wait.done():
            wait.set_result(None)

    def _respond(
        self,
        status: int,
        body: Any,
        headers: dict[str, str],
        rid: str,
        origin: str | None,
        close: bool,
    ) -> None:
        sock = self.transport
        if sock is None or sock.is_closing():
            return
        data = b"" if body is None else orjson.dumps(body)
        parts = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode(),
            b"Content-Type: application/json\r\n" if body is not None else b"",
        ]
        if origin is not None:
            parts.append(f"Access-Control-Allow-Origin: {origin}\r\n".encode())
            parts.append(_CORS)
        for key, value in headers.items():
            parts.append(f"{key}: {value}\r\n".encode())
        parts.append(f"X-Request-ID: {rid}\r\n".encode())
        parts.append(_SECURITY)
        if self._secure:
            parts.append(_HSTS)
        if close:
            parts.append(b"Connection: close\r\n")
        if status != 204:
            parts.append(f"Content-Length: {len(data)}\r\n".encode())
        parts.append(f"Date: {_http_date()}\r\n\r\n".encode() + data)
        sock.write(b"".join(parts))
