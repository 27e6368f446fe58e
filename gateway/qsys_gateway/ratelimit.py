"""Per-subject rate limiting on the `limits` library, shared by replicas through Redis.

The spec's token bucket (requestsPerSecond, burst) maps to a moving window of
`amount` calls per `seconds` (see `plan_window` and docs/policy.md). When Redis
cannot be reached (or answers too slowly) the limiter falls back to per-replica
in-memory windows and `healthy()` reports False: a Redis outage loosens limits
to "per replica" instead of taking every room offline or lifting them entirely.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from functools import lru_cache

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from qsys_protocol.config import RateConfig

log = logging.getLogger(__name__)

KEY_PREFIX = "qsys-gateway"
NAMESPACE = "rate"
MAX_WINDOW_SECONDS = 3600
REDIS_TIMEOUT = 0.25
"""Seconds one Redis round trip (connect or command) may take before the call fails open."""
RETRY_REDIS_AFTER = 1.0
"""After a Redis failure, calls use the in-memory fallback for this long before trying Redis."""
EXPIRY_SWEEP_SECONDS = 1.0
"""How often the memory storage drops events that have left every window."""


class SweepingMemoryStorage(MemoryStorage):
    """`limits`' MemoryStorage starts a sweep of expired events (a task, a hop to a worker
    thread, holding the key's lock) on every hit that finds the previous sweep finished,
    i.e. about once per call at a few hundred calls/s. The sweep only frees memory (the
    moving window counts by timestamp), so it runs here at most every
    EXPIRY_SWEEP_SECONDS: the same decisions at a fraction of the CPU and latency."""

    _next_sweep = 0.0

    async def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + EXPIRY_SWEEP_SECONDS
        await super()._MemoryStorage__schedule_expiry()  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    retry_after: float


@dataclass(frozen=True, slots=True)
class WindowPlan:
    amount: int
    seconds: int

    @property
    def rate(self) -> float:
        return self.amount / self.seconds


@lru_cache(maxsize=1024)
def _plan(rps: float, burst: int) -> WindowPlan:
    # The library's windows are whole seconds. The ideal window is burst/rps
    # seconds; take the whole-second window W <= burst/rps (at least 1) whose
    # round(rps*W)/W is closest to rps, preferring the longest (closest to burst).
    longest = max(1, min(MAX_WINDOW_SECONDS, math.floor(burst / rps)))
    best = WindowPlan(max(1, round(rps)), 1)
    best_error = abs(best.rate - rps)
    for seconds in range(2, longest + 1):
        candidate = WindowPlan(max(1, round(rps * seconds)), seconds)
        error = abs(candidate.rate - rps)
        if error <= best_error + 1e-12:
            best, best_error = candidate, error
    return best


def plan_window(rate: RateConfig) -> WindowPlan:
    """The moving window enforcing `rate`: `amount` calls in any `seconds`-long interval."""
    return _plan(float(rate.requestsPerSecond), int(rate.burst))


class RateLimiter:
    def __init__(
        self,
        storage: MemoryStorage | RedisStorage,
        *,
        timeout: float = REDIS_TIMEOUT,
        retry_after_failure: float = RETRY_REDIS_AFTER,
    ) -> None:
        self._storage = storage
        self._strategy = MovingWindowRateLimiter(storage)
        self._remote = isinstance(storage, RedisStorage)
        self._fallback = (
            MovingWindowRateLimiter(SweepingMemoryStorage()) if self._remote else self._strategy
        )
        self._timeout = timeout
        self._retry_after_failure = retry_after_failure
        self._skip_until = 0.0
        self._healthy = True
        self._items: dict[WindowPlan, RateLimitItem] = {}

    @classmethod
    def create(cls, storage: str, *, timeout: float = REDIS_TIMEOUT) -> RateLimiter:
        """`memory` (per replica) or `redis://host:port/db` / `rediss://...` (shared)."""
        if storage == "memory":
            return cls(SweepingMemoryStorage(), timeout=timeout)
        if storage.startswith(("redis://", "rediss://")):
            return cls(
                RedisStorage(
                    "async+" + storage,
                    wrap_exceptions=True,
                    key_prefix=KEY_PREFIX,
                    connect_timeout=timeout,
                    stream_timeout=timeout,
                ),
                timeout=timeout,
            )
        raise ValueError('rate-limit storage must be "memory" or redis://host:port/db')

    @property
    def shared(self) -> bool:
        return self._remote

    def _item(self, plan: WindowPlan) -> RateLimitItem:
        item = self._items.get(plan)
        if item is None:
            item = RateLimitItemPerSecond(plan.amount, plan.seconds, namespace=NAMESPACE)
            if len(self._items) < 1024:
                self._items[plan] = item
        return item

    async def hit(self, subject: str, rate: RateConfig, cost: int = 1) -> RateDecision:
        """Take `cost` calls from `subject`'s allowance. Never raises for storage trouble."""
        plan = plan_window(rate)
        cost = max(1, cost)
        if cost > plan.amount:
            return RateDecision(False, float(plan.seconds))
        item = self._item(plan)
        if self._remote and time.monotonic() < self._skip_until:
            return await self._decide(self._fallback, item, subject, cost, plan)
        try:
            async with asyncio.timeout(self._timeout * 2):
                decision = await self._decide(self._strategy, item, subject, cost, plan)
        except Exception as exc:  # storage trouble of any kind: per-replica limits meanwhile
            self._mark_failed(exc)
            return await self._decide(self._fallback, item, subject, cost, plan)
        self._mark_healthy()
        return decision

    @staticmethod
    async def _decide(
        strategy: MovingWindowRateLimiter,
        item: RateLimitItem,
        subject: str,
        cost: int,
        plan: WindowPlan,
    ) -> RateDecision:
        if await strategy.hit(item, subject, cost=cost):
            return RateDecision(True, 0.0)
        stats = await strategy.get_window_stats(item, subject)
        wait = stats.reset_time - time.time()
        return RateDecision(False, min(float(plan.seconds), max(0.001, wait)))

    async def healthy(self) -> bool:
        """Memory: always True. Redis: a PING answered within the timeout."""
        if not self._remote:
            return True
        try:
            async with asyncio.timeout(self._timeout * 2):
                ok = await self._storage.check()
        except Exception as exc:
            self._mark_failed(exc)
            return False
        if ok:
            self._mark_healthy()
            self._skip_until = 0.0
        else:
            self._mark_failed(None)
        return ok

    def _mark_failed(self, exc: BaseException | None) -> None:
        self._skip_until = time.monotonic() + self._retry_after_failure
        if self._healthy:
            # The exception type only: messages may carry the storage URI.
            log.warning(
                "rate-limit storage unreachable (%s); per-replica limits until it is back",
                type(exc).__name__ if exc is not None else "ping failed",
            )
        self._healthy = False

    def _mark_healthy(self) -> None:
        if not self._healthy:
            log.info("rate-limit storage reachable again")
        self._healthy = True

    async def close(self) -> None:
        if isinstance(self._storage, RedisStorage):
            client = getattr(self._storage.bridge, "storage", None)
            pool = getattr(client, "connection_pool", None)
            if pool is not None:
                pool.disconnect()
        else:
            timer = self._storage.timer
            if timer is not None and not timer.done():
                timer.cancel()
