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
        self._waiters: dict[str, deque[asyncio.Future[bool]]] = {}

    def pending(self, owner: str) -> int:
        return self._pending.get(owner, 0)

    def try_acquire(self, owner: str) -> bool:
        """Take one of `owner`'s slots if one is free now (no coroutine, no wait)."""
        held = self._pending.get(owner, 0)
        if held < self.limit and owner not in self._waiters:
            self._pending[owner] = held + 1
            return True
        return False

    async def acquire(self, owner: str, timeout: float) -> bool:
        """Take one of `owner`'s slots, waiting up to `timeout` seconds (False: none came)."""
        held = self._pending.get(owner, 0)
        if held < self.limit and owner not in self._waiters:
            self._pending[owner] = held + 1
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiters.setdefault(owner, deque()).append(fut)
        # A timer handle, not asyncio.timeout: a flood keeps thousands waiting.
        timer = loop.call_later(timeout, _expire, fut)
        try:
            granted = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():
                self.release(owner)  # handed over just as the wait was cancelled
            else:
                self._forget(owner, fut)
            raise
        finally:
            timer.cancel()
        if not granted:
            self._forget(owner, fut)
        return granted

    def release(self, owner: str) -> None:
        """Give back a slot: to `owner`'s oldest waiter if there is one."""
        queue = self._waiters.get(owner)
        while queue:
            fut = queue.popleft()
            if not fut.done():
                if not queue:
                    del self._waiters[owner]
                fut.set_result(True)  # the slot passes on; the count stays
                return
        self._waiters.pop(owner, None)
        left = self._pending.get(owner, 0) - 1
        if left > 0:
            self._pending[owner] = left
        else:
            self._pending.pop(owner, None)

    def _forget(self, owner: str, fut: asyncio.Future[bool]) -> None:
        queue = self._waiters.get(owner)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(fut)
            if not queue:
                del self._waiters[owner]


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)
