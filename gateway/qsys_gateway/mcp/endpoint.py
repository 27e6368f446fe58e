"""`/v1/mcp` over HTTP: the gateway's bounds around the MCP SDK's Streamable HTTP
session manager, and its lifecycle.

Authentication, per-subject bounds (sessions, concurrent requests, one request per id in
flight) and the body limit are applied here before the SDK sees a byte; the SDK then
runs the handlers of `server.py`, whose every Core access goes through admission.
Design: docs/mcp.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

import orjson
from aiohttp import web
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import ErrorCode, QrcError

from ..transports.common import HTTP_STATUS, Services, request_id
from ..transports.responses import bearer, source_ip
from .admission import McpAdmission, Refusal
from .bridge import serve
from .resources import SESSION_HEADER
from .server import CALLER_KEY, McpServer
from .sessions import SessionTable, opens_session, request_ids

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The SDK's own body limit: the largest `limits.maxMessageBytes` a config may set."""
EXPOSED = "Mcp-Session-Id, X-Request-ID, Retry-After, WWW-Authenticate"
REAP_INTERVAL = 30.0


class McpEndpoint:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.admission = McpAdmission(svc)
        self.server = McpServer(self.admission)
        cfg = svc.runtime.config
        self.manager = StreamableHTTPSessionManager(
            self.server.sdk,
            json_response=True,
            session_idle_timeout=cfg.mcp.sessionIdleSeconds,
            # the gateway applies the (reloadable) maxMessageBytes before the SDK runs
            max_request_body_size=MAX_MESSAGE_BYTES,
            max_sessions=cfg.limits.maxClients,
        )
        self.sessions = SessionTable()
        self._streams: dict[str, int] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None

    # ---- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        started = asyncio.Event()

        async def run() -> None:
            async with self.manager.run():
                started.set()
                await self._stop.wait()

        loop = asyncio.get_running_loop()
        self._runner = loop.create_task(run(), name="qsys-mcp")
        waiter = loop.create_task(started.wait())
        await asyncio.wait({self._runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not started.is_set():
            waiter.cancel()
            self._runner.result()  # the SDK's start-up error
            raise RuntimeError("the MCP session manager stopped at start-up")
        self._reaper = loop.create_task(self._reap(), name="qsys-mcp-reaper")

    async def stop(self) -> None:
        """End every session and cancel every MCP request still in flight, so shutdown
        never waits on what a client left open (a stream, a request the SDK never
        answers)."""
        self._stop.set()
        if self._reaper is not None:
            self._reaper.cancel()
        current = asyncio.current_task()
        for task in list(self._handlers):
            if task is not current:
                task.cancel()
        for session in self.sessions.all():
            await self._end(session.sid)
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(5.0):
                    await self._runner
        await self.server.resources.close()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            await self._prune()

    async def _prune(self) -> None:
        for sid in self.sessions.idle(self.svc.runtime.config.mcp.sessionIdleSeconds):
            await self._end(sid)

    async def _end(self, sid: str) -> None:
        """End a session: the SDK's (as a client DELETE would), its open streams, its
        subscriptions and its entry in the table."""
        session = self.sessions.drop(sid)
        if session is None:
            return
        self.svc.admission.unwatch(session.caller)
        current = asyncio.current_task()
        for task in list(session.tasks):
            if task is not current:
                task.cancel()
        await self._terminate(sid, session.subject)
        await self.server.resources.drop(sid)

    async def _terminate(self, sid: str, subject: str) -> None:
        """A DELETE of the session through the SDK's public entry (404 once it is gone)."""
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "DELETE",
            "scheme": "http",
            "path": "/v1/mcp",
            "raw_path": b"/v1/mcp",
            "query_string": b"",
            "root_path": "",
            "headers": [(SESSION_HEADER.encode(), sid.encode())],
            "client": None,
            "server": None,
            "state": {},
            "user": _user(subject),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            return None

        ending = asyncio.get_running_loop().create_task(
            self.manager.handle_request(scope, receive, send)
        )
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await ending

    # ---- HTTP -------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rt = self.svc.runtime
        cfg = rt.config
        rid: str = request.get("request_id") or request_id(request.headers.get("X-Request-ID"))
        if rt.shutting_down:
            return _error(QrcError(ErrorCode.CORE_UNAVAILABLE, "Gateway is shutting down"), 503)
        if request.method not in ("GET", "POST", "DELETE"):
            return _error(
                QrcError(ErrorCode.INVALID_REQUEST, "Method not allowed"),
                405,
                {"Allow": "GET, POST, DELETE"},
            )
        source = source_ip(request)
        try:
            caller = await self.admission.authenticate(bearer(request), source, rid)
        except Refusal as err:
            return _error(err, retry_after=err.retry_after)
        limit = cfg.limits.maxMessageBytes
        body = b""
        if request.method == "POST":
            if request.content_length is not None and request.content_length > limit:
                return _error(_too_large(limit), 413)
            body = await request.content.read(limit + 1)
            if len(body) > limit:
                return _error(_too_large(limit), 413)
        name = caller.subject.name
        if self._streams.get(name, 0) >= cfg.mcp.maxStreamsPerSubject:
            return _error(
                QrcError(
                    ErrorCode.RATE_LIMITED,
                    f"Too many concurrent MCP requests for this subject "
                    f"(at most {cfg.mcp.maxStreamsPerSubject})",
                ),
                retry_after=1.0,
            )
        sid = request.headers.get(SESSION_HEADER)
        session = self.sessions.get(sid) if sid is not None else None
        cap = cfg.mcp.maxSessionsPerSubject
        if request.method == "POST" and sid is None and opens_session(body):
            await self._prune()
            if self.sessions.count(name) >= cap:
                return _too_many_sessions(cap)
        ids: list[str] = []
        if request.method == "POST" and session is not None:
            ids = request_ids(body) or []
            if len(set(ids)) < len(ids) or session.ids.intersection(ids):
                return _error(
                    QrcError(
                        ErrorCode.INVALID_REQUEST,
                        "Invalid request: a request with this id is already in flight on "
                        "this session",
                    ),
                    409,
                )
        headers = {
            "X-Request-ID": rid,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        }
        origin = request.headers.get("Origin")
        if origin is not None:  # the middleware refused origins outside cors.allowedOrigins
            headers["Access-Control-Allow-Origin"] = origin
            headers["Vary"] = "Origin"
            headers["Access-Control-Expose-Headers"] = EXPOSED
        task = asyncio.current_task()
        assert task is not None
        admission = self.svc.admission
        if session is not None:
            session.use(caller.caller)
            session.ids.update(ids)
            session.tasks.add(task)
        self._handlers.add(task)
        self._streams[name] = self._streams.get(name, 0) + 1
        # the request's own token is checked once a second while it runs (open streams)
        admission.watch(caller.caller, lambda: self._cancel(task))
        try:
            response = await serve(
                self.manager.handle_request,
                request,
                body,
                {"user": _user(name), CALLER_KEY: caller},
                headers,
            )
        finally:
            admission.unwatch(caller.caller)
            self._handlers.discard(task)
            left = self._streams[name] - 1
            if left:
                self._streams[name] = left
            else:
                del self._streams[name]
            if session is not None:
                session.ids.difference_update(ids)
                session.tasks.discard(task)
                session.last_active = time.monotonic()
        new_sid = response.headers.get(SESSION_HEADER)
        if new_sid and self.sessions.get(new_sid) is None and response.status < 400:
            if self.sessions.count(name) >= cap:
                # opened by a body the check above did not see as an initialize
                self.sessions.add(new_sid, caller.caller)
                await self._end(new_sid)
                return _too_many_sessions(cap)
            opened = self.sessions.add(new_sid, caller.caller)
            admission.watch(opened.caller, lambda: self._end(new_sid))
        if request.method == "DELETE" and sid is not None and response.status < 400:
            await self._end(sid)
        return response

    async def _cancel(self, task: asyncio.Task[Any]) -> None:
        task.cancel()


def _too_large(limit: int) -> QrcError:
    return QrcError(ErrorCode.INVALID_REQUEST, f"Request body over {limit} bytes")


def _user(subject: str) -> AuthenticatedUser:
    """The SDK's owner of a session: the subject (its sessions answer only to it)."""
    return AuthenticatedUser(AccessToken(token="-", client_id=subject, scopes=[]))  # noqa: S106


def _too_many_sessions(cap: int) -> web.Response:
    return _error(
        QrcError(
            ErrorCode.RATE_LIMITED,
            f"Too many MCP sessions for this subject (at most {cap}); end one with DELETE "
            "or reuse its Mcp-Session-Id",
        ),
        retry_after=5.0,
    )


def _error(
    err: QrcError,
    status: int | None = None,
    headers: dict[str, str] | None = None,
    retry_after: float = 0.0,
) -> web.Response:
    h = dict(headers or {})
    code = status or HTTP_STATUS.get(err.code, 400)
    if code == 401:
        h["WWW-Authenticate"] = 'Bearer realm="qsys-gateway"'
    if code in (429, 503):
        h["Retry-After"] = str(max(1, math.ceil(retry_after or 1.0)))
    return web.Response(
        body=orjson.dumps(jsonrpc.error_message(None, err)),
        status=code,
        content_type="application/json",
        headers=h,
    )
