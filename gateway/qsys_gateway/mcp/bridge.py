"""Serve one ASGI app (the MCP SDK's Streamable HTTP session manager) from an aiohttp
handler: the request becomes an ASGI scope whose body was read (within a limit) by the
gateway, and the app's response messages are written to a `web.StreamResponse`, streamed
as they come (Server-Sent Events)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aiohttp import web

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DISCONNECT_CHECK = 0.5
"""Seconds between checks whether the client of an open stream went away."""

_SKIPPED_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})


def scope_of(request: web.Request, extra: dict[str, Any]) -> Scope:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    sock = transport.get_extra_info("sockname") if transport is not None else None
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": "https" if request.secure else "http",
        "path": request.path,
        "raw_path": request.raw_path.split("?", 1)[0].encode("latin-1"),
        "query_string": request.query_string.encode("latin-1"),
        "root_path": "",
        "headers": [(k.lower(), v) for k, v in request.raw_headers],
        "client": tuple(peer[:2]) if isinstance(peer, tuple) else None,
        "server": tuple(sock[:2]) if isinstance(sock, tuple) else None,
        "state": {},
        **extra,
    }


async def serve(
    app: AsgiApp,
    request: web.Request,
    body: bytes,
    extra: dict[str, Any],
    headers: dict[str, str],
) -> web.StreamResponse:
    """Run `app` for `request` (whose `body` was already read); `headers` are added to
    the response. A response sent in one message comes back as an unprepared
    `web.Response` (one write, the app's middleware still applies); a streamed one
    (Server-Sent Events) is written as it comes and comes back prepared."""
    done = asyncio.Event()
    sent_body = False
    status = 500
    head: list[tuple[str, str]] = []
    response: web.StreamResponse | None = None

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        while not done.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DISCONNECT_CHECK):
                    await done.wait()
        return {"type": "http.disconnect"}

    def build(cls: type[web.StreamResponse], **kwargs: Any) -> web.StreamResponse:
        out = cls(status=status, **kwargs)
        for name, value in head:
            out.headers.add(name, value)
        out.headers.update(headers)
        return out

    async def send(message: Message) -> None:
        nonlocal response, status
        kind = message["type"]
        if kind == "http.response.start":
            status = int(message["status"])
            head[:] = [
                (n.decode("latin-1"), v.decode("latin-1"))
                for n, v in message.get("headers", [])
                if n.decode("latin-1").lower() not in _SKIPPED_HEADERS
            ]
            if any(
                n.lower() == "content-type" and v.startswith("text/event-stream") for n, v in head
            ):
                # a stream is open from its start, not from its first event
                response = build(web.StreamResponse)
                try:
                    await response.prepare(request)
                except ConnectionError:
                    done.set()
            return
        if kind != "http.response.body" or done.is_set():
            return
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        if response is None and not more:
            response = build(web.Response, body=chunk)
            done.set()
            return
        try:
            if response is None:
                response = build(web.StreamResponse)
                await response.prepare(request)
            if chunk:
                await response.write(chunk)
            if not more:
                await response.write_eof()
                done.set()
        except ConnectionError:
            done.set()  # the client went away: the app sees http.disconnect

    try:
        await app(scope_of(request, extra), receive, send)
    finally:
        done.set()
    if response is None:  # the app sent no body: answer its status with an empty one
        response = build(web.Response)
    return response
