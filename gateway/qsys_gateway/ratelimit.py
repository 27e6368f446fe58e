"""Per-subject rate limiting: a token bucket in its exact form, GCRA, shared by replicas
through Redis.

A bucket of `burst` tokens refilled at `requestsPerSecond` is kept as one number per
subject, its theoretical arrival time (TAT): a call of cost *c* passes when
`max(TAT, now) + c*T - burst*T <= now` (T = 1/rate) and moves TAT to `max(TAT, now) + c*T`.
With Redis the check-and-set is one Lua script (atomic, on the Redis clock, so replicas
share one bucket); with `memory` it is a dict in this replica. The `limits` library has
no token-bucket strategy, hence the script (docs/policy.md).

Buckets are keyed by the QSysCore (namespace and name) and the subject, so gateways of
different cores that share one Redis never share a bucket; a gateway without a core
identity (run by hand) keys by subject alone.

Redis is `redis://`, `rediss://` or, behind Redis Sentinel,
`redis+sentinel://[[user]:password@]host:port[,host:port...]/primary-name[/db]` (the
`limits` library's spelling): the primary is asked of the sentinels at connect, and
after any storage error the connections are dropped so the next call asks again
(a failed-over primary, or an old one demoted to a read-only replica).

When Redis cannot be reached (or answers too slowly) the limiter falls back to
per-replica in-memory buckets, `healthy()` reports False, the storage gauge drops to 0
and each decision made so is counted: a Redis outage or failover loosens limits to "per
replica" instead of taking every room offline or lifting them entirely.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import coredis
from coredis.pool import BlockingConnectionPool
from coredis.retry import NoRetryPolicy
from coredis.sentinel import Sentinel, SentinelConnectionPool

from qsys_protocol.config import GatewayConfig, RateConfig

from .metrics import GatewayMetrics

log = logging.getLogger(__name__)

KEY_PREFIX = "qsys-gateway:gcra:"
REDIS_TIMEOUT = 0.25
"""Seconds one Redis round trip (connect or command) may take before the call fails open."""
RETRY_REDIS_AFTER = 1.0
"""After a Redis failure, calls use the in-memory fallback for this long before trying Redis."""
REDIS_CONNECTIONS = 16
SENTINEL_PORT = 26379
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


ALLOWED = RateDecision(True, 0.0)


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
        return ALLOWED

    def _sweep(self, now: float) -> None:
        """Forget full buckets (indistinguishable from absent ones); if none, the oldest."""
        full = [k for k, tat in self._tat.items() if tat <= now]
        for k in full:
            del self._tat[k]
        if len(self._tat) >= self._max:
            del self._tat[next(iter(self._tat))]


def bucket_scope(config: GatewayConfig) -> str:
    """What goes before the subject in a bucket's key: the QSysCore, `<namespace>/<name>/`
    (neither may contain `/`), or nothing for a gateway without one."""
    core = config.qsysCore
    return f"{core.namespace}/{core.name}/" if core is not None else ""


@dataclass(frozen=True, slots=True)
class SentinelUri:
    sentinels: tuple[tuple[str, int], ...]
    primary: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_uri(uri: str) -> SentinelUri:
    """`redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/primary[/db]`."""
    rest = uri.removeprefix("redis+sentinel://")
    if rest == uri:
        raise ValueError("not a redis+sentinel:// URI")
    userinfo, _, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    username = password = None
    if userinfo:
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    sentinels = []
    for item in hosts.split(","):
        host, port = item, SENTINEL_PORT
        if item.startswith("["):
            host, _, tail = item[1:].partition("]")
            if tail:
                port = int(tail.removeprefix(":"))
        elif ":" in item:
            host, _, number = item.rpartition(":")
            port = int(number)
        if not host or not 0 < port < 65536:
            raise ValueError("a sentinel address needs a host and a port 1-65535")
        sentinels.append((host, port))
    primary, _, db = path.partition("/")
    if not primary:
        raise ValueError("a redis+sentinel:// URI names the primary: .../<primary-name>")
    return SentinelUri(tuple(sentinels), primary, int(db or 0), username, password)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The primary's address from the sentinels, and a bounded pool that queues a burst
    for a connection (as for plain Redis) instead of refusing it."""


class RateLimiter:
    def __init__(
        self,
        redis: coredis.Redis[Any] | None = None,
        *,
        timeout: float = REDIS_TIMEOUT,
        retry_after_failure: float = RETRY_REDIS_AFTER,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.scope = ""
        """Put before the subject in every bucket's key (`bucket_scope`)."""
        self._metrics = metrics
        self._redis = redis
        self._script = redis.register_script(GCRA_SCRIPT) if redis is not None else None
        self._memory = MemoryBuckets()
        self._script_loaded = False
        self._timeout = timeout
        self._retry_after_failure = retry_after_failure
        self._skip_until = 0.0
        self._healthy = True

    @classmethod
    def create(
        cls,
        storage: str,
        *,
        timeout: float = REDIS_TIMEOUT,
        metrics: GatewayMetrics | None = None,
    ) -> RateLimiter:
        """`memory` (per replica), `redis://host:port/db` / `rediss://...` or
        `redis+sentinel://host:port,.../primary` (shared)."""
        if storage == "memory":
            return cls(None, timeout=timeout, metrics=metrics)
        # A few connections shared by every call (a burst queues for one instead of
        # opening a connection per call, which times out under load).
        pool_options: dict[str, Any] = {
            "connect_timeout": timeout,
            "stream_timeout": timeout,
            "max_connections": REDIS_CONNECTIONS,
            "timeout": timeout * 2,
        }
        pool: coredis.ConnectionPool
        if storage.startswith("redis+sentinel://"):
            uri = parse_sentinel_uri(storage)
            sentinel: Sentinel[Any] = Sentinel(
                uri.sentinels,
                sentinel_kwargs={"connect_timeout": timeout, "stream_timeout": timeout},
            )
            pool = _BlockingSentinelPool(
                uri.primary,
                sentinel,
                db=uri.db,
                username=uri.username,
                password=uri.password,
                **pool_options,
            )
        elif storage.startswith(("redis://", "rediss://")):
            pool = coredis.BlockingConnectionPool.from_url(storage, **pool_options)
        else:
            raise ValueError(
                'rate-limit storage must be "memory", redis://host:port/db or '
                "redis+sentinel://host:port/primary"
            )
        client: coredis.Redis[Any] = coredis.Redis(
            connection_pool=pool, retry_policy=NoRetryPolicy(), verify_version=False
        )
        return cls(client, timeout=timeout, metrics=metrics)

    @property
    def shared(self) -> bool:
        return self._redis is not None

    def hit_local(self, subject: str, rate: RateConfig, cost: int = 1) -> RateDecision | None:
        """`hit` without a coroutine when no shared storage is configured (the memory
        buckets answer at once); None when the decision needs `await hit(...)`."""
        if self._script is not None:
            return None
        cost = max(1, cost)
        if cost > rate.burst:
            return refusal_for_oversize(rate, cost)
        return self._memory.hit(self.scope + subject, rate, cost)

    async def hit(self, subject: str, rate: RateConfig, cost: int = 1) -> RateDecision:
        """Take `cost` tokens from `subject`'s bucket. Never raises for storage trouble."""
        cost = max(1, cost)
        if cost > rate.burst:
            return refusal_for_oversize(rate, cost)
        key = self.scope + subject
        if self._script is None:
            return self._memory.hit(key, rate, cost)
        if time.monotonic() < self._skip_until:
            return self._fallback(key, rate, cost)
        interval, burst = bucket_params(rate)
        try:
            async with asyncio.timeout(self._timeout * 2):
                if not self._script_loaded:  # else every first call pays a NOSCRIPT round
                    await self._redis.script_load(GCRA_SCRIPT)  # type: ignore[union-attr]
                    self._script_loaded = True
                reply = await self._script(
                    keys=[KEY_PREFIX + key],
                    args=[f"{interval * 1e6:.3f}", int(burst), cost],
                )
            allowed, wait = _parse_reply(reply)
        except Exception as exc:  # storage trouble of any kind: per-replica limits meanwhile
            self._mark_failed(exc)
            return self._fallback(key, rate, cost)
        self._mark_healthy()
        return RateDecision(allowed, 0.0 if allowed else max(0.001, wait / 1e6))

    def _fallback(self, key: str, rate: RateConfig, cost: int) -> RateDecision:
        if self._metrics is not None:
            self._metrics.ratelimit_fallback.inc()
        return self._memory.hit(key, rate, cost)

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
        if self._redis is not None:
            # Sentinel: the next connection asks for the primary again. Plain Redis:
            # no connection half-read after a timeout is reused.
            self._redis.connection_pool.disconnect()
        if self._metrics is not None:
            self._metrics.ratelimit_storage_up.set(0)
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
            if self._metrics is not None:
                self._metrics.ratelimit_storage_up.set(1)
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
