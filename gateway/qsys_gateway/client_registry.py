"""Connected WebSocket and QRC clients: admission by budget, broadcast, shutdown.

Logged-on clients count against `maxClients`; connections not logged on yet against
their own, smaller budget (`maxUnauthenticatedClients`, and per source address
`maxUnauthenticatedClientsPerSource`), so sockets that never log on cannot take
the slots of clients that do. At either cap the connection waiting longest for its
Logon (of that source, at the per-source cap) is closed for the newcomer: many
clients share one address (office NAT, a control VLAN, a node's SNAT), and one of
them holding its address's slots must not lock out the others."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from qsys_protocol.config import LimitsConfig

from .metrics import GatewayMetrics


@dataclass(eq=False, slots=True)
class ClientHandle:
    transport: str
    source_ip: str
    send: Callable[[dict[str, Any]], None]
    close: Callable[[], Awaitable[None]]
    subject: str | None = None


class ClientRegistry:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self.clients: dict[ClientHandle, None] = {}  # insertion order: oldest first
        self.authenticated = 0
        self._per_transport: dict[str, int] = {}
        self._closing: set[asyncio.Future[None]] = set()
        self._unauthenticated: dict[str, dict[ClientHandle, None]] = {}
        """Per source, its connections not logged on yet, oldest first."""

    def __len__(self) -> int:
        return len(self.clients)

    def count(self, transport: str) -> int:
        """Connected clients of one transport ("ws", "qrwc", "qrc")."""
        return self._per_transport.get(transport, 0)

    @property
    def unauthenticated(self) -> int:
        return len(self.clients) - self.authenticated

    def refusal(self, source: str, limits: LimitsConfig, *, authenticated: bool) -> str | None:
        """Why a new connection from `source` may not be added (None: it may)."""
        if self.authenticated >= limits.maxClients:
            return "max_clients"
        if authenticated:
            return None
        mine = self._unauthenticated.get(source)
        if mine is not None and len(mine) >= limits.maxUnauthenticatedClientsPerSource:
            self._evict(next(iter(mine)), "evicted_per_source")
        elif self.unauthenticated >= limits.maxUnauthenticatedClients:
            # Make room by closing the connection waiting longest for its Logon: a client
            # that logs on at once always gets in, sockets that never do are cycled out.
            oldest = next((c for c in self.clients if c.subject is None), None)
            if oldest is None:
                return "unauthenticated_total"
            self._evict(oldest, "evicted")
        return None

    def _evict(self, client: ClientHandle, reason: str) -> None:
        self.remove(client)
        self._metrics.connections_refused.labels(client.transport, reason).inc()
        closer = asyncio.ensure_future(client.close())
        self._closing.add(closer)
        closer.add_done_callback(self._closing.discard)

    def add(self, client: ClientHandle) -> None:
        """Register a connection; not logged on yet unless `client.subject` is set."""
        self.clients[client] = None
        if client.subject is None:
            self._unauthenticated.setdefault(client.source_ip, {})[client] = None
            self._unauthenticated_changed()
        else:
            self.authenticated += 1
        self._per_transport[client.transport] = self.count(client.transport) + 1
        self._metrics.clients.labels(client.transport).inc()

    def promote(self, client: ClientHandle, subject: str, max_clients: int) -> bool:
        """`client` logged on as `subject`: False (nothing changed) when `max_clients`
        logged-on clients are connected already."""
        if client.subject is not None:
            return True
        if self.authenticated >= max_clients:
            return False
        client.subject = subject
        if client in self.clients:
            self._forget_unauthenticated(client)
            self.authenticated += 1
        return True

    def remove(self, client: ClientHandle) -> None:
        if client in self.clients:
            del self.clients[client]
            if client.subject is None:
                self._forget_unauthenticated(client)
            else:
                self.authenticated -= 1
            self._per_transport[client.transport] -= 1
            self._metrics.clients.labels(client.transport).dec()

    def _forget_unauthenticated(self, client: ClientHandle) -> None:
        mine = self._unauthenticated.get(client.source_ip)
        if mine is not None:
            mine.pop(client, None)
            if not mine:
                del self._unauthenticated[client.source_ip]
        self._unauthenticated_changed()

    def _unauthenticated_changed(self) -> None:
        self._metrics.unauthenticated_clients.set(self.unauthenticated)

    def broadcast(self, message: dict[str, Any]) -> None:
        for client in list(self.clients):
            if client.subject is not None:
                client.send(message)

    async def close_all(self) -> None:
        for client in list(self.clients):
            await client.close()
