"""Work in flight, bounded by weight: a call naming 1,000 controls holds about a
megabyte while it runs (its params, the forwarded copy, the Core's answer), so the
bound counts controls, not calls.

Each connection may have `PER_CONNECTION` units in flight and the gateway `TOTAL`;
a call over either waits (first come, first served), which also stops reading from
that client: TCP pushes back instead of the gateway's memory growing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

PER_CONNECTION = 2048
TOTAL = 32768


def call_weight(obj: Any) -> int:
    """1 + the number of controls a JSON-RPC call names (lists in its params)."""
    params = obj.get("params") if isinstance(obj, dict) else None
    if isinstance(params, list):
        return 1 + len(params)
    if not isinstance(params, dict):
        return 1
    weight = 1
    for value in params.values():
        if isinstance(value, list):
            weight += len(value)
        elif isinstance(value, dict):
            inner = value.get("Controls")
            if isinstance(inner, list):
                weight += len(inner)
    return weight


class WeightedGate:
    """A FIFO weighted semaphore; a weight above the limit is clipped to it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] | None = None
        """Made by the first call that has to wait (a gate per idle connection stays small)."""

    async def acquire(self, weight: int) -> int:
        weight = max(1, min(weight, self.limit))
        if not self._waiters and self.used + weight <= self.limit:
            self.used += weight
            return weight
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (weight, fut)
        if self._waiters is None:
            self._waiters = deque()
        self._waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(weight)  # granted just as we were cancelled
            elif self._waiters is not None:
                self._waiters.remove(entry)
                self._wake()
            raise
        return weight

    def release(self, weight: int) -> None:
        self.used -= weight
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            weight, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if self.used + weight > self.limit:
                return
            self._waiters.popleft()
            self.used += weight
            fut.set_result(None)
