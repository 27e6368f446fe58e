"""Per-subject rate limiting: a token bucket in its exact form, GCRA, shared by replicas
through Redis.

A bucket of `burst` tokens refilled at `requestsPerSecond` is kept as one number per
subject, its theoretical arrival time (TAT): a call of cost *c* passes when
`max(TAT, now) + c*T - burst*T <= now` (T = 1/rate) and moves TAT to `max(TAT, now) + c*T`.
With Redis the check-and-set is one Lua script (atomic, on the Redis clock, so replicas
share one bucket); with `memory` it is a dict in this replica. The `limits` library has
no token-bucket strategy, hence the script (docs/policy.md).

When Redis cannot be reached (or answers too slowly) the limiter falls back to
per-replica in-memory buckets and `healthy()` reports False: a Redis outage loosens
limits to "per replica" instead of taking every room offline or lifting them entirely.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import coredis
from coredis.retry import NoRetryPolicy

from qsys_protocol.config import RateConfig

log = logging.getLogger(__name__)

KEY_PREFIX = "qsys-gateway:gcra:"
REDIS_TIMEOUT = 0.25
"""Seconds one Redis round trip (connect or command) may take before the call fails open."""
RETRY_REDIS_AFTER = 1.0
"""After a Redis failure, calls use the in-memory fallback for this long before trying Redis."""
REDIS_CONNECTIONS = 16
MAX_MEMORY_BUCKETS = 100_000
"""Buckets the memory store holds; full buckets (TAT in the past) are dropped first."""

# KEYS[1]: the bucket; ARGV: interval (µs per token), burst, cost. TAT in µs on the Redis
# clock, kept with a TTL of "until the bucket is full again" (a missing key == full).
GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * tonumber(ARGV[3])
local wait = new_tat - tolerance - now
if wait > 0 then
  return {0, string.format('%.0f', wait)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX',
  math.max(1, math.ceil((new_tat - now) / 1000)))
return {1, '0'}
"""


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    retry_after: float


def bucket_params(rate: RateConfig) -> tuple[float, float]:
    """(seconds per token, bucket size in tokens)."""
    return 1.0 / float(rate.requestsPerSecond), float(rate.burst)


def refusal_for_oversize(rate: RateConfig, cost: int) -> RateDecision:
    """A cost above the bucket size never passes: refuse, telling when the bucket is full."""
    interval, burst = bucket_params(rate)
    return RateDecision(False, max(0.001, burst * interval))


class MemoryBuckets:
    """GCRA buckets of one replica. Synchronous: no await, so never a timeout to misreport."""

    def __init__(self, max_buckets: int = MAX_MEMORY_BUCKETS) -> None:
        self._tat: dict[str, float] = {}
        self._max = max_buckets

    def __len__(self) -> int:
        return len(self._tat)

    def hit(self, key: str, rate: RateConfig, cost: int, now: float | None = None) -> RateDecision:
        interval, burst = bucket_params(rate)
        now = time.monotonic() if now is None else now
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + interval * cost
        wait = new_tat - burst * interval - now
        if wait > 1e-9:
            return RateDecision(False, wait)
        if key not in self._tat and len(self._tat) >= self._max:
            self._sweep(now)
        self._tat[key] = new_tat
        return RateDecision(True, 0.0)

    def _sweep(self, now: float) -> None:
        """Forget full buckets (indistinguishable from absent ones); if none, the oldest."""
        full = [k for k, tat in self._tat.items() if tat <= now]
        for k in full:
            del self._tat[k]
        if len(self._tat) >= self._max:
            del self._tat[next(iter(self._tat))]


class RateLimiter:
    def __init__(
        self,
        redis: coredis.Redis[Any] | None = None,
        *,
        timeout: float = REDIS_TIMEOUT,
        retry_after_failure: float = RETRY_REDIS_AFTER,
    ) -> None:
        self._redis = redis
        self._script = redis.register_script(GCRA_SCRIPT) if redis is not None else None
        self._memory = MemoryBuckets()
        self._script_loaded = False
        self._timeout = timeout
        self._retry_after_failure = retry_after_failure
        self._skip_until = 0.0
        self._healthy = True

    @classmethod
    def create(cls, storage: str, *, timeout: float = REDIS_TIMEOUT) -> RateLimiter:
        """`memory` (per replica) or `redis://host:port/db` / `rediss://...` (shared)."""
        if storage == "memory":
            return cls(None, timeout=timeout)
        if storage.startswith(("redis://", "rediss://")):
            # A few connections shared by every call (a burst queues for one instead of
            # opening a connection per call, which times out under load).
            pool = coredis.BlockingConnectionPool.from_url(
                storage,
                connect_timeout=timeout,
                stream_timeout=timeout,
                max_connections=REDIS_CONNECTIONS,
                timeout=timeout * 2,
            )
            client: coredis.Redis[Any] = coredis.Redis(
                connection_pool=pool, retry_policy=NoRetryPolicy(), verify_version=False
            )
            return cls(client, timeout=timeout)
        raise ValueError('rate-limit storage must be "memory" or redis://host:port/db')

    @property
    def shared(self) -> bool:
        return self._redis is not None

    async def hit(self, subject: str, rate: RateConfig, cost: int = 1) -> RateDecision:
        """Take `cost` tokens from `subject`'s bucket. Never raises for storage trouble."""
        cost = max(1, cost)
        if cost > rate.burst:
            return refusal_for_oversize(rate, cost)
        if self._script is None or time.monotonic() < self._skip_until:
            return self._memory.hit(subject, rate, cost)
        interval, burst = bucket_params(rate)
        try:
            async with asyncio.timeout(self._timeout * 2):
                if not self._script_loaded:  # else every first call pays a NOSCRIPT round
                    await self._redis.script_load(GCRA_SCRIPT)  # type: ignore[union-attr]
                    self._script_loaded = True
                reply = await self._script(
                    keys=[KEY_PREFIX + subject],
                    args=[f"{interval * 1e6:.3f}", int(burst), cost],
                )
            allowed, wait = _parse_reply(reply)
        except Exception as exc:  # storage trouble of any kind: per-replica limits meanwhile
            self._mark_failed(exc)
            return self._memory.hit(subject, rate, cost)
        self._mark_healthy()
        return RateDecision(allowed, 0.0 if allowed else max(0.001, wait / 1e6))

    async def healthy(self) -> bool:
        """Memory: always True. Redis: a PING answered within the timeout."""
        if self._redis is None:
            return True
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._redis.ping()
        except Exception as exc:
            self._mark_failed(exc)
            return False
        self._mark_healthy()
        self._skip_until = 0.0
        return True

    def _mark_failed(self, exc: BaseException) -> None:
        self._script_loaded = False  # a restarted Redis has lost it
        self._skip_until = time.monotonic() + self._retry_after_failure
        if self._healthy:
            # The exception type only: messages may carry the storage URI.
            log.warning(
                "rate-limit storage unreachable (%s); per-replica limits until it is back",
                type(exc).__name__,
            )
        self._healthy = False

    def _mark_healthy(self) -> None:
        if not self._healthy:
            log.info("rate-limit storage reachable again")
        self._healthy = True

    async def close(self) -> None:
        if self._redis is not None:
            self._redis.connection_pool.disconnect()


def _parse_reply(reply: Any) -> tuple[bool, float]:
    if not isinstance(reply, list | tuple) or len(reply) != 2:
        raise ValueError("unexpected reply from the rate-limit script")
    flag, wait = reply
    wait_text = wait.decode() if isinstance(wait, bytes) else str(wait)
    return int(flag) == 1, float(wait_text)
