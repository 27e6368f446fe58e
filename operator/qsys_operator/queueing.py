"""A keyed work queue: one worker per key, bursts coalesced, failures retried with backoff.

Knows nothing of Kubernetes. `add(key)` only marks the key dirty; its worker runs
`work(key)` again until no new mark arrived meanwhile, so a burst of triggers
costs one or two runs. At most `concurrency` runs are in flight at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0


class WorkQueue(Generic[K]):
    def __init__(
        self,
        work: Callable[[K], Awaitable[None]],
        *,
        concurrency: int,
        gate: Callable[[], Awaitable[bool]] | None = None,
        on_error: Callable[[K, Exception, float], None] | None = None,
        first_backoff: float = FIRST_BACKOFF_S,
        max_backoff: float = MAX_BACKOFF_S,
    ) -> None:
        """`gate`: when it answers False the run is skipped (e.g. a paused peer).
        `on_error(key, exc, retry_in)` is told of each failure before the backoff sleep."""
        self._work = work
        self._gate = gate
        self._on_error = on_error
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._pending: set[K] = set()
        self._tasks: dict[K, asyncio.Task[None]] = {}
        self._backoff: dict[K, float] = {}
        self._slots = asyncio.Semaphore(concurrency)

    def add(self, key: K) -> None:
        self._pending.add(key)
        task = self._tasks.get(key)
        if task is None or task.done():
            self._tasks[key] = asyncio.get_running_loop().create_task(self._worker(key))

    def backoff(self, key: K) -> float:
        """Seconds the key's worker waited after its latest failure; 0 after a success."""
        return self._backoff.get(key, 0.0)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    async def _worker(self, key: K) -> None:
        while key in self._pending:
            self._pending.discard(key)
            try:
                if self._gate is not None and not await self._gate():
                    continue
                async with self._slots:
                    await self._work(key)
                self._backoff.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                previous = self._backoff.get(key)
                delay = min(self._max_backoff, previous * 2 if previous else self._first_backoff)
                self._backoff[key] = delay
                if self._on_error is not None:
                    self._on_error(key, exc, delay)
                await asyncio.sleep(delay)
                self._pending.add(key)
        self._tasks.pop(key, None)
