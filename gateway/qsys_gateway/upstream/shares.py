"""Each subject's share of the calls pending on the Core.

The upstream connections queue at most `max_pending` calls each (256); without a
share, one subject with a high rate limit fills them and every other subject's calls
are refused as Core-busy. A subject may have `limit` calls pending on the Core at once
(all its connections and sessions together); further calls wait, in order, within their
own deadline, so a flood slows its sender and nobody else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class SubjectShares:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending: dict[str, int] = {}
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}

    def pending(self, owner: str) -> int:
        return self._pending.get(owner, 0)

    async def acquire(self, owner: str, timeout: float) -> bool:
        """Take one of `owner`'s slots, waiting up to `timeout` seconds (False: none came)."""
        held = self._pending.get(owner, 0)
        if held < self.limit and owner not in self._waiters:
            self._pending[owner] = held + 1
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiters.setdefault(owner, deque())
        queue.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            return self._abandon(owner, fut)
        except asyncio.CancelledError:
            if self._abandon(owner, fut):
                self.release(owner)
            raise
        return True

    def release(self, owner: str) -> None:
        """Give back a slot: to `owner`'s oldest waiter if there is one."""
        queue = self._waiters.get(owner)
        while queue:
            fut = queue.popleft()
            if not fut.done():
                if not queue:
                    del self._waiters[owner]
                fut.set_result(None)  # the slot passes on; the count stays
                return
        self._waiters.pop(owner, None)
        left = self._pending.get(owner, 0) - 1
        if left > 0:
            self._pending[owner] = left
        else:
            self._pending.pop(owner, None)

    def _abandon(self, owner: str, fut: asyncio.Future[None]) -> bool:
        """A wait ended early: True when the slot was handed over meanwhile (it is ours)."""
        if fut.done() and not fut.cancelled():
            return True
        queue = self._waiters.get(owner)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(fut)
            if not queue:
                del self._waiters[owner]
        return False
