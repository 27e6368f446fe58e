"""Each subject's share of the calls pending on the Core.

The upstream connections queue at most `max_pending` calls each (256); without a
share, one subject with a high rate limit fills them and every other subject's calls
are refused as Core-busy. A subject may have `limit` calls pending on the Core at once
(all its connections and sessions together); further calls wait, in order, within their
own deadline, so a flood slows its sender and nobody else.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable

Grant = Callable[[], bool]
"""Called when a slot is handed to a waiter: True when it took the slot, False when it
no longer waits (the slot goes to the next one)."""


class SubjectShares:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending: dict[str, int] = {}
        self._waiters: dict[str, deque[Grant]] = {}

    def pending(self, owner: str) -> int:
        return self._pending.get(owner, 0)

    def waiting(self, owner: str) -> int:
        return len(self._waiters.get(owner, ()))

    def try_acquire(self, owner: str) -> bool:
        """Take one of `owner`'s slots if one is free now and nobody waits for one."""
        held = self._pending.get(owner, 0)
        if held < self.limit and owner not in self._waiters:
            self._pending[owner] = held + 1
            return True
        return False

    def wait(self, owner: str, grant: Grant) -> None:
        """After `try_acquire` failed: `grant` is called, in order of waiting, when one of
        `owner`'s slots is given back. The waiter bounds its own wait (`forget`)."""
        self._waiters.setdefault(owner, deque()).append(grant)

    def forget(self, owner: str, grant: Grant) -> None:
        queue = self._waiters.get(owner)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(grant)
            if not queue:
                del self._waiters[owner]

    def release(self, owner: str) -> None:
        """Give back a slot: to `owner`'s oldest waiter if there is one."""
        queue = self._waiters.get(owner)
        while queue:
            grant = queue.popleft()
            if not queue:
                del self._waiters[owner]
            if grant():
                return  # the slot passes on; the count stays
            queue = self._waiters.get(owner)
        left = self._pending.get(owner, 0) - 1
        if left > 0:
            self._pending[owner] = left
        else:
            self._pending.pop(owner, None)
