"""Rate limiting against a real redis-server (and the in-memory storage).

redis-server is required: a machine without it fails these tests instead of
skipping them, so a green run always means the shared limit was exercised.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from qsys_gateway.ratelimit import MemoryBuckets, RateDecision, RateLimiter
from qsys_protocol.config import RateConfig
from qsys_testkit import RedisProcess, free_port

pytestmark = pytest.mark.timing

LOOPBACK = "127.0.0.1"
LOAD_FACTOR = 5
MEASURE_SECONDS = 3.0


LimiterFactory = Callable[[str], RateLimiter]


@pytest.fixture
async def make_limiter() -> AsyncIterator[LimiterFactory]:
    made: list[RateLimiter] = []

    def factory(storage: str) -> RateLimiter:
        limiter = RateLimiter.create(storage)
        made.append(limiter)
        return limiter

    try:
        yield factory
    finally:
        for limiter in made:
            await limiter.close()


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory"
    server: RedisProcess = request.getfixturevalue("qsys_redis")
    return server.url


def subject() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


async def offered_load(
    limiters: list[RateLimiter], name: str, rate: RateConfig, seconds: float
) -> tuple[int, int]:
    """Offer LOAD_FACTOR x the configured rate, evenly paced, for `seconds`; (accepted, offered)."""
    per_second = rate.requestsPerSecond * LOAD_FACTOR
    total = int(per_second * seconds)
    start = time.perf_counter()
    pending: list[asyncio.Task[RateDecision]] = []
    for i in range(total):
        due = start + i / per_second
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if time.perf_counter() - start >= seconds:
            break
        # Fire without waiting for the answer, so storage latency cannot slow the offered load.
        pending.append(asyncio.ensure_future(limiters[i % len(limiters)].hit(name, rate)))
    decisions = await asyncio.gather(*pending)
    offered = len(decisions)
    accepted = sum(d.allowed for d in decisions)
    assert time.perf_counter() - start < seconds + 3, "load generator fell far behind"
    return accepted, offered


# ---- the token bucket (GCRA) ----------------------------------------------------------


def test_gcra_refills_continuously_not_by_window() -> None:
    """After a burst, tokens come back one per 1/rate seconds (a moving window would
    refuse everything until the whole window has passed, then allow the burst again)."""
    buckets = MemoryBuckets()
    rate = RateConfig(requestsPerSecond=10, burst=10)
    assert [buckets.hit("a", rate, 1, now=0.0).allowed for _ in range(11)] == [True] * 10 + [False]
    refused = buckets.hit("a", rate, 1, now=0.0)
    assert refused.retry_after == pytest.approx(0.1)
    # 0.35 s later exactly three tokens are back.
    assert [buckets.hit("a", rate, 1, now=0.35).allowed for _ in range(4)] == [True] * 3 + [False]
    # A full bucket after burst/rate seconds of silence, never more.
    assert [buckets.hit("a", rate, 1, now=5.0).allowed for _ in range(11)] == [True] * 10 + [False]


def test_gcra_reconnect_storm_gets_the_full_rate() -> None:
    """600 panels of one subject reconnecting: over t seconds a bucket admits burst + rate*t."""
    buckets = MemoryBuckets()
    rate = RateConfig(requestsPerSecond=20, burst=40)
    admitted = 0
    for i in range(6000):  # 600 calls/s offered for 10 s
        admitted += buckets.hit("venue", rate, 1, now=i / 600).allowed
    assert admitted == pytest.approx(40 + 20 * 10, abs=2)


def test_memory_buckets_are_bounded() -> None:
    buckets = MemoryBuckets(max_buckets=100)
    rate = RateConfig(requestsPerSecond=1, burst=1)
    for i in range(1000):
        assert buckets.hit(f"s{i}", rate, 1, now=float(i) / 1000).allowed
    assert len(buckets) <= 100


# ---- accuracy, burst, retry-after --------------------------------------------------


async def test_accepted_rate_under_overload(storage: str, make_limiter: LimiterFactory) -> None:
    rate = RateConfig(requestsPerSecond=50, burst=50)
    accepted, offered = await offered_load(
        [make_limiter(storage)], subject(), rate, MEASURE_SECONDS
    )
    assert offered >= 0.9 * rate.requestsPerSecond * MEASURE_SECONDS * LOAD_FACTOR
    expected = rate.burst + rate.requestsPerSecond * MEASURE_SECONDS
    assert abs(accepted - expected) <= 0.1 * expected, (accepted, expected)


async def test_burst_is_honoured_then_refills(storage: str, make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(storage)
    name = subject()
    rate = RateConfig(requestsPerSecond=20, burst=40)
    started = time.perf_counter()
    decisions = [await limiter.hit(name, rate) for _ in range(100)]
    elapsed = time.perf_counter() - started
    allowed = [d.allowed for d in decisions]
    assert allowed[:40] == [True] * 40
    assert all(d.retry_after == 0 for d in decisions if d.allowed)
    # Afterwards only what refilled meanwhile (one token per 50 ms) passes.
    assert sum(allowed[40:]) <= elapsed * 20 + 1, (sum(allowed[40:]), elapsed)
    waits = [d.retry_after for d in decisions if not d.allowed]
    assert len(waits) >= 50
    assert all(0 < w <= 0.06 for w in waits), waits
    # After the advertised wait, calls pass again.
    small = RateConfig(requestsPerSecond=5, burst=5)
    other = subject()
    assert all([(await limiter.hit(other, small)).allowed for _ in range(5)])
    denied = await limiter.hit(other, small)
    assert not denied.allowed
    assert 0 < denied.retry_after <= 1.0
    await asyncio.sleep(denied.retry_after + 0.05)
    assert (await limiter.hit(other, small)).allowed


async def test_subjects_have_separate_allowances(
    storage: str, make_limiter: LimiterFactory
) -> None:
    limiter = make_limiter(storage)
    rate = RateConfig(requestsPerSecond=2, burst=2)
    a, b = subject(), subject()
    assert [(await limiter.hit(a, rate)).allowed for _ in range(3)] == [True, True, False]
    assert (await limiter.hit(b, rate)).allowed


async def test_cost_counts_against_the_allowance(
    storage: str, make_limiter: LimiterFactory
) -> None:
    limiter = make_limiter(storage)
    rate = RateConfig(requestsPerSecond=5, burst=5)
    name = subject()
    assert (await limiter.hit(name, rate, cost=4)).allowed
    assert not (await limiter.hit(name, rate, cost=2)).allowed
    assert (await limiter.hit(name, rate, cost=1)).allowed
    too_big = await limiter.hit(subject(), rate, cost=6)
    assert not too_big.allowed
    assert too_big.retry_after == 1.0


async def test_memory_limiter_never_reports_storage_trouble(
    make_limiter: LimiterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Under a loaded event loop the in-memory limiter used to time out on its own
    locks and log "rate-limit storage unreachable" although there is no storage."""
    limiter = make_limiter("memory")
    rate = RateConfig(requestsPerSecond=1000, burst=1000)

    async def stall() -> None:
        await asyncio.sleep(0)
        time.sleep(0.7)  # a busy loop: longer than any storage timeout

    name = subject()
    with caplog.at_level("INFO", logger="qsys_gateway.ratelimit"):
        for _ in range(2):
            await limiter.hit(name, rate)
            await asyncio.gather(*(limiter.hit(name, rate) for _ in range(50)), stall())
            await asyncio.sleep(1.05)
    assert not [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert await limiter.healthy()


async def test_memory_storage_is_always_healthy(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter("memory")
    assert await limiter.healthy()
    assert not limiter.shared


# ---- shared across replicas ---------------------------------------------------------------


async def test_two_replicas_share_one_limit(
    qsys_redis: RedisProcess, make_limiter: LimiterFactory
) -> None:
    replicas = [make_limiter(qsys_redis.url), make_limiter(qsys_redis.url)]
    assert all(r.shared for r in replicas)
    rate = RateConfig(requestsPerSecond=50, burst=50)
    accepted, _ = await offered_load(replicas, subject(), rate, MEASURE_SECONDS)
    expected = rate.burst + rate.requestsPerSecond * MEASURE_SECONDS
    assert abs(accepted - expected) <= 0.1 * expected, (accepted, expected)


async def test_replicas_see_each_others_burst(
    qsys_redis: RedisProcess, make_limiter: LimiterFactory
) -> None:
    one, two = make_limiter(qsys_redis.url), make_limiter(qsys_redis.url)
    rate = RateConfig(requestsPerSecond=10, burst=10)
    name = subject()
    assert all([(await one.hit(name, rate)).allowed for _ in range(10)])
    refused = await two.hit(name, rate)
    assert not refused.allowed
    assert 0 < refused.retry_after <= 0.11


# ---- Redis outages: per-replica limits, promptly, and say so ---------------------------------


async def test_redis_killed_mid_run_falls_back_to_local_limits(
    qsys_redis: RedisProcess, make_limiter: LimiterFactory
) -> None:
    limiter = make_limiter(qsys_redis.url)
    rate = RateConfig(requestsPerSecond=1, burst=1)
    name = subject()
    assert await limiter.healthy()
    assert (await limiter.hit(name, rate)).allowed
    assert not (await limiter.hit(name, rate)).allowed  # the limit is enforced by Redis

    qsys_redis.kill()
    during = subject()
    decisions = []
    for _ in range(20):
        start = time.perf_counter()
        decisions.append((await limiter.hit(during, rate)).allowed)
        assert time.perf_counter() - start < 1.0
    assert decisions == [True] + [False] * 19  # this replica's own window keeps limiting
    start = time.perf_counter()
    assert not await limiter.healthy()
    assert time.perf_counter() - start < 1.0

    # Back again (same port): healthy, and limiting resumes.
    qsys_redis.start()
    deadline = time.monotonic() + 10
    while not await limiter.healthy():
        assert time.monotonic() < deadline, "limiter did not recover after Redis came back"
        await asyncio.sleep(0.1)
    other = subject()
    assert [(await limiter.hit(other, rate)).allowed for _ in range(2)] == [True, False]


async def test_unresponsive_redis_does_not_hang_calls(
    qsys_redis: RedisProcess, make_limiter: LimiterFactory
) -> None:
    limiter = make_limiter(qsys_redis.url)
    rate = RateConfig(requestsPerSecond=1, burst=1)
    assert (await limiter.hit(subject(), rate)).allowed
    assert qsys_redis.proc is not None
    qsys_redis.proc.send_signal(signal.SIGSTOP)  # accepts TCP, never answers
    try:
        for _ in range(5):
            start = time.perf_counter()
            decision = await limiter.hit(subject(), rate)
            assert time.perf_counter() - start < 1.5
            assert decision.allowed
        start = time.perf_counter()
        assert not await limiter.healthy()
        assert time.perf_counter() - start < 1.5
    finally:
        qsys_redis.proc.send_signal(signal.SIGCONT)


async def test_unreachable_redis_from_the_start(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(f"redis://{LOOPBACK}:{free_port()}/0")
    start = time.perf_counter()
    decision = await limiter.hit(subject(), RateConfig(requestsPerSecond=1, burst=1))
    assert decision.allowed
    assert not await limiter.healthy()
    assert time.perf_counter() - start < 2.0


def test_bad_storage_uri_is_refused() -> None:
    with pytest.raises(ValueError, match="memory"):
        RateLimiter.create("mysql://x")
