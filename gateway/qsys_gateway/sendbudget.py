"""Bytes waiting to be sent to clients: bounded per client and for the whole gateway.

A client that does not read lets replies and pushes pile up in the gateway. Each
connection may hold `per_client` bytes; all connections together `total`. Over
either bound the connection is closed (WebSocket 1008, QRC: disconnected), so
memory stays bounded however many clients stop reading.
"""

from __future__ import annotations

from dataclasses import dataclass

PER_CLIENT_BYTES = 1024 * 1024
TOTAL_BYTES = 64 * 1024 * 1024
SMALL_BACKLOG = 64 * 1024
"""Over the total bound only clients with at least this backlog are closed: one that
reads normally never holds more than a few replies."""


@dataclass(slots=True)
class SendBudget:
    per_client: int = PER_CLIENT_BYTES
    total: int = TOTAL_BYTES
    used: int = 0

    def admits(self, backlog: int, size: int) -> bool:
        """May a client holding `backlog` queued bytes queue `size` more?

        One message is always accepted into an empty queue: a client that reads is
        never closed, however large one reply or push is."""
        if backlog == 0:
            return True
        if backlog + size > self.per_client:
            return False
        return self.used + size <= self.total or backlog + size < SMALL_BACKLOG

    def take(self, size: int) -> None:
        self.used += size

    def give(self, size: int) -> None:
        self.used = max(0, self.used - size)
