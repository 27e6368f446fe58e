"""Connection limits and header deadlines for the HTTP listener (aiohttp has no header
timeout and no connection cap).

Every accepted socket passes through `HttpConnections.admit`:

- at most `max_total` open connections (WebSocket included). At the cap a new
  connection evicts the connection idle longest (waiting for a request head: a new
  socket or a keep-alive one between requests; clients retry those); only when
  every connection is inside a request is the new one refused (503);
- at most `max_pending_per_source` connections per source address that have not yet
  sent a complete request head: at that cap the source's oldest such connection is
  closed for the newcomer, so sockets that never finish a head cannot lock out the
  other clients behind the same address (NAT, SNAT), whose requests arrive at once;
- a request head must be complete within `header_timeout` seconds of the connection
  opening or of the previous response ending (idle keep-alive included); otherwise
  the socket is closed.

The request middleware reports when a request's head has arrived (`started`) and
when its response is done (`finished`). An upgraded WebSocket is taken from aiohttp
(`take_over`): its bytes go to the WebSocket's own protocol, and it is never idle
(never evicted, no header deadline) until it closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

from qsys_protocol.config import LimitsConfig

from .metrics import GatewayMetrics

log = logging.getLogger("qsys_gateway.http")

BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Conn:
    __slots__ = ("guard", "in_request", "kept", "proven", "source", "taken", "timer", "transport")

    def __init__(self, transport: asyncio.Transport, source: str, guard: _Guarded) -> None:
        self.transport = transport
        self.source = source
        self.guard = guard
        self.taken = False
        self.proven = False
        self.in_request = 0
        self.timer: asyncio.TimerHandle | None = None
        self.kept: object | None = None


class HttpConnections:
    def __init__(
        self,
        metrics: GatewayMetrics,
        settings: Callable[[], LimitsConfig],
        *,
        fd_budget: int = 1 << 30,
        other_fds: Callable[[], int] = lambda: 0,
    ) -> None:
        self.metrics = metrics
        self._settings = settings
        self.fd_budget = fd_budget
        """Descriptors for client sockets: HTTP connections (WebSocket included) and the
        raw QRC sockets (`other_fds()` open now) share them."""
        self._other_fds = other_fds
        self._conns: dict[asyncio.BaseTransport, _Conn] = {}
        self._idle: OrderedDict[asyncio.BaseTransport, _Conn] = OrderedDict()
        self._pending_by_source: dict[str, dict[asyncio.BaseTransport, _Conn]] = {}
        """Per source, its connections without a first request head, oldest first."""

    def __len__(self) -> int:
        return len(self._conns)

    @property
    def max_total(self) -> int:
        free = max(16, self.fd_budget - self._other_fds())
        return min(self._settings().maxHttpConnections, free)

    @property
    def header_timeout(self) -> float:
        return self._settings().headerTimeoutSeconds

    @property
    def body_timeout(self) -> float:
        return self._settings().bodyTimeoutSeconds

    def admit(self, transport: asyncio.Transport, guard: _Guarded) -> bool:
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if peer else "-"
        pending = self._pending_by_source.get(source)
        if pending is not None and len(pending) >= self._settings().maxPendingConnectionsPerSource:
            oldest = next(iter(pending.values()))
            self.metrics.connections_refused.labels("http", "evicted_per_source").inc()
            self.lost(oldest.transport)
            oldest.transport.abort()
        if len(self._conns) >= self.max_total:
            if not self._idle:
                self._refuse(transport, "total")
                return False
            _, oldest = self._idle.popitem(last=False)
            self.metrics.connections_refused.labels("http", "evicted").inc()
            self.lost(oldest.transport)
            oldest.transport.abort()
        conn = _Conn(transport, source, guard)
        self._conns[transport] = conn
        self._idle[transport] = conn
        self._pending_by_source.setdefault(source, {})[transport] = conn
        self._arm(conn)
        self.metrics.http_connections.set(len(self._conns))
        return True

    def lost(self, transport: asyncio.BaseTransport) -> None:
        conn = self._conns.pop(transport, None)
        if conn is None:
            return
        self._idle.pop(transport, None)
        if not conn.proven:
            self._unpend(conn)
        if conn.timer is not None:
            conn.timer.cancel()
        self.metrics.http_connections.set(len(self._conns))

    def started(self, transport: asyncio.BaseTransport | None) -> None:
        """A request head arrived on `transport`: its header deadline is met."""
        conn = self._conns.get(transport) if transport is not None else None
        if conn is None:
            return
        conn.in_request += 1
        self._idle.pop(conn.transport, None)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        if not conn.proven:
            conn.proven = True
            self._unpend(conn)

    def finished(self, transport: asyncio.BaseTransport | None) -> None:
        """A response was sent: the next request head is due within the header timeout."""
        conn = self._conns.get(transport) if transport is not None else None
        if conn is None or conn.taken:
            return
        conn.in_request -= 1
        if conn.in_request <= 0:
            conn.in_request = 0
            self._idle[conn.transport] = conn
            self._arm(conn)

    def take_over(self, transport: asyncio.BaseTransport, protocol: asyncio.Protocol) -> bool:
        """From now on `protocol` gets the connection's bytes and events, not aiohttp (the
        caller then tells aiohttp's protocol the connection is gone for it). False when
        the connection is gone already."""
        conn = self._conns.get(transport)
        if conn is None:
            return False
        conn.taken = True
        self._idle.pop(transport, None)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        conn.guard.inner = protocol
        return True

    def close_idle(self) -> None:
        """Shutdown: close the connections between requests (keep-alive ones included)."""
        for conn in list(self._idle.values()):
            conn.transport.close()

    def kept(self, transport: asyncio.BaseTransport | None) -> object | None:
        """What the transport kept for this connection (`keep`); gone with the connection."""
        conn = self._conns.get(transport) if transport is not None else None
        return conn.kept if conn is not None else None

    def keep(self, transport: asyncio.BaseTransport | None, value: object | None) -> None:
        conn = self._conns.get(transport) if transport is not None else None
        if conn is not None:
            conn.kept = value

    def _arm(self, conn: _Conn) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
        conn.timer = asyncio.get_running_loop().call_later(self.header_timeout, self._expire, conn)

    def _expire(self, conn: _Conn) -> None:
        conn.timer = None
        if conn.in_request or conn.taken or conn.transport.is_closing():
            return
        self.metrics.connections_refused.labels("http", "header_timeout").inc()
        conn.transport.abort()

    def _unpend(self, conn: _Conn) -> None:
        pending = self._pending_by_source.get(conn.source)
        if pending is not None:
            pending.pop(conn.transport, None)
            if not pending:
                del self._pending_by_source[conn.source]

    def _refuse(self, transport: asyncio.Transport, reason: str) -> None:
        self.metrics.connections_refused.labels("http", reason).inc()
        transport.write(BUSY)
        transport.close()

    def protocol_factory(
        self,
        inner: Callable[[], asyncio.BaseProtocol],
        front: Callable[[_Guarded], asyncio.Protocol | None] | None = None,
    ) -> Callable[[], asyncio.BaseProtocol]:
        """Connections go to `front(guard)` first when it gives a protocol (it may hand
        the connection to aiohttp's `inner` later: `_Guarded.to_aiohttp`), else to
        `inner`."""

        def make() -> asyncio.BaseProtocol:
            return _Guarded(self, inner, front)

        return make


class _Guarded(asyncio.Protocol):
    """Passes everything to aiohttp's protocol, once the connection was admitted (or to
    the protocol that took the connection over)."""

    __slots__ = ("_front", "_limits", "_make_inner", "_transport", "inner")

    def __init__(
        self,
        limits: HttpConnections,
        inner: Callable[[], asyncio.BaseProtocol],
        front: Callable[[_Guarded], asyncio.Protocol | None] | None = None,
    ) -> None:
        self._limits = limits
        self._make_inner = inner
        self._front = front
        self.inner: Any = None
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if not self._limits.admit(transport, self):
            return
        self._transport = transport
        first = self._front(self) if self._front is not None else None
        self.inner = first if first is not None else self._make_inner()
        self.inner.connection_made(transport)

    def to_aiohttp(self, data: bytes) -> None:
        """aiohttp serves the connection from now on, starting with `data`."""
        assert self._transport is not None
        self.inner = inner = cast(asyncio.Protocol, self._make_inner())
        inner.connection_made(self._transport)
        if data:
            inner.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            result: bool | None = self.inner.eof_received()
            return result
        return None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._limits.lost(self._transport)
        if self.inner is not None:
            self.inner.connection_lost(exc)


class LimitedTCPSite(web.TCPSite):
    """`web.TCPSite` whose connections pass through `HttpConnections`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        limits: HttpConnections,
        front: Callable[[_Guarded], asyncio.Protocol | None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(runner, **kwargs)
        self._limits = limits
        self._front = front

    async def start(self) -> None:
        self._runner._reg_site(self)  # what BaseSite.start does
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._limits.protocol_factory(server, self._front),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
