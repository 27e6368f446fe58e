"""Connected WebSocket and QRC clients: `maxClients` accounting, broadcast, shutdown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

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
        self.clients: set[ClientHandle] = set()

    def __len__(self) -> int:
        return len(self.clients)

    def add(self, client: ClientHandle) -> None:
        self.clients.add(client)
        self._metrics.clients.labels(client.transport).inc()

    def remove(self, client: ClientHandle) -> None:
        if client in self.clients:
            self.clients.discard(client)
            self._metrics.clients.labels(client.transport).dec()

    def broadcast(self, message: dict[str, Any]) -> None:
        for client in list(self.clients):
            if client.subject is not None:
                client.send(message)

    async def close_all(self) -> None:
        for client in list(self.clients):
            await client.close()
