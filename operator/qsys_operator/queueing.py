"""A keyed work queue: one worker per key, bursts coalesced, failures retried with backoff.

Knows nothing of Kubernetes. `add(key)` only marks the key dirty; its worker runs
`work(key)` again until no new mark arrived meanwhile, so a burst of triggers
costs one or two runs. At most `concurrency` runs are in flight at once; runs waiting
for a slot are let in round-robin between their groups (`group(key)`, the namespace for
the operator), so a burst of hundreds of keys in one group delays another group's key
by about one run, not by the whole burst.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0


class FairSlots:
    """A semaphore whose waiters are admitted round-robin between groups (FIFO within one).

    A freed slot goes to the first waiter of the group next in turn; that group then
    moves to the end of the turn, so with groups A (hundreds waiting) and B (one
    waiting) B's waiter is admitted second, not last.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._turn: OrderedDict[Hashable, deque[asyncio.Future[None]]] = OrderedDict()

    async def acquire(self, group: Hashable) -> None:
        if self._free > 0:  # then nobody waits
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turn.setdefault(group, deque()).append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot while being cancelled: pass it on
            else:
                waiters = self._turn.get(group)
                if waiters is not None and fut in waiters:
                    waiters.remove(fut)
                    if not waiters:
                        del self._turn[group]
            raise

    def release(self) -> None:
        if not self._turn:
            self._free += 1
            return
        group, waiters = self._turn.popitem(last=False)
        fut = waiters.popleft()
        if waiters:
            self._turn[group] = waiters  # back of the turn
        fut.set_result(None)


class WorkQueue(Generic[K]):
    def __init__(
        self,
        work: Callable[[K], Awaitable[None]],
        *,
        concurrency: int,
        group: Callable[[K], Hashable] | None = None,
        gate: Callable[[], Awaitable[bool]] | None = None,
        on_error: Callable[[K, Exception, float], None] | None = None,
        first_backoff: float = FIRST_BACKOFF_S,
        max_backoff: float = MAX_BACKOFF_S,
    ) -> None:
        """`group(key)`: keys waiting for a slot are admitted round-robin between groups
        (default: one group, first come first served).
        `gate`: when it answers False the run is skipped (e.g. a paused peer).
        `on_error(key, exc, retry_in)` is told of each failure before the backoff sleep."""
        self._work = work
        self._group = group or (lambda _: None)
        self._gate = gate
        self._on_error = on_error
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._pending: set[K] = set()
        self._tasks: dict[K, asyncio.Task[None]] = {}
        self._backoff: dict[K, float] = {}
        self._slots = FairSlots(concurrency)

    def add(self, key: K) -> None:
        self._pending.add(key)
        task = self._tasks.get(key)
        if task is None or task.done():
            self._tasks[key] = asyncio.get_running_loop().create_task(self._worker(key))

    @property
    def busy(self) -> int:
        """Keys with a run in flight, waiting for a slot or waiting out a backoff."""
        return len(self._tasks)

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
                await self._slots.acquire(self._group(key))
                try:
                    await self._work(key)
                finally:
                    self._slots.release()
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
