"""Rate-limit buckets in a shared Redis belong to one QSysCore: two gateways (different
namespace or core, the same subject name) on one real redis-server, then the gateway
behind real Redis Sentinels through a primary fail-over.

redis-server and redis-sentinel are required (hack/install-system-deps.sh): a machine
without them fails here instead of skipping."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from gateway_harness import SLOW_TOKEN, GatewayFactory

from qsys_testkit import GatewayProcess, RedisProcess, SentinelProcess, wait_for

NOOP = {"jsonrpc": "2.0", "id": 1, "method": "NoOp", "params": {}}
"""`slow` may call NoOp: 2 calls/s, burst 2 (gateway_harness.base_config)."""


def _shared(storage: str, namespace: str, core: str, refill_s: float | None = None) -> Any:
    """refill_s: `slow`'s bucket refills one call per refill_s seconds (burst 2 kept), so a
    drained bucket stays drained while a loaded machine runs the next steps."""

    def edit(config: dict[str, Any]) -> None:
        config["limits"]["storage"] = storage
        config["qsysCore"] = {"namespace": namespace, "name": core}
        if refill_s is not None:
            for subject in config["subjects"]:
                if subject["name"] == "slow":
                    subject["rate"]["requestsPerSecond"] = 1 / refill_s

    return edit


async def _statuses(http: aiohttp.ClientSession, gw: GatewayProcess, n: int) -> list[int]:
    statuses = []
    for _ in range(n):
        async with http.post(
            f"{gw.url}/v1/rpc", json=NOOP, headers={"Authorization": f"Bearer {SLOW_TOKEN}"}
        ) as r:
            statuses.append(r.status)
    return statuses


async def test_cores_sharing_a_redis_never_share_a_bucket(
    module_sim_port: int, make_gateway: GatewayFactory, qsys_redis: RedisProcess
) -> None:
    def shared(namespace: str, core: str) -> Any:
        return _shared(qsys_redis.url, namespace, core, refill_s=60)

    hall_a = make_gateway(module_sim_port, shared("venue-a", "hall"))
    hall_b = make_gateway(module_sim_port, shared("venue-b", "hall"))
    lobby_a = make_gateway(module_sim_port, shared("venue-a", "lobby"))
    hall_a_twin = make_gateway(module_sim_port, shared("venue-a", "hall"))
    async with aiohttp.ClientSession() as http:
        assert await _statuses(http, hall_a, 3) == [200, 200, 429]
        keys = await asyncio.to_thread(qsys_redis.command, "KEYS", "qsys-gateway:gcra:*")
        assert "qsys-gateway:gcra:venue-a/hall/slow" in keys, keys
        # Another namespace, or another core of the namespace: a bucket of its own.
        assert await _statuses(http, hall_b, 2) == [200, 200]
        assert await _statuses(http, lobby_a, 2) == [200, 200]
        # A second replica of the same core shares the first one's (drained) bucket.
        assert await _statuses(http, hall_a_twin, 1) == [429]


@pytest.fixture
def sentinels() -> Iterator[tuple[RedisProcess, RedisProcess, list[SentinelProcess]]]:
    """A primary, its replica and three sentinels (quorum 2), all on loopback."""
    with contextlib.ExitStack() as stack:
        primary = stack.enter_context(RedisProcess())
        replica = stack.enter_context(RedisProcess(replica_of=primary))
        wait_for(
            "the replica in sync",
            lambda: "master_link_status:up" in replica.command("INFO", "replication") or None,
            15,
        )
        watching = [stack.enter_context(SentinelProcess(primary)) for _ in range(3)]
        wait_for(
            "the sentinels to find each other and the replica",
            lambda: all(s.knows(sentinels=2, replicas=1) for s in watching) or None,
            20,
        )
        yield primary, replica, watching


async def test_the_limiter_keeps_limiting_through_a_sentinel_failover(
    module_sim_port: int,
    make_gateway: GatewayFactory,
    sentinels: tuple[RedisProcess, RedisProcess, list[SentinelProcess]],
) -> None:
    primary, replica, watching = sentinels
    url = SentinelProcess.url_of(watching)
    gw = make_gateway(module_sim_port, _shared(url, "venue-a", "hall"))
    seen: Counter[int] = Counter()
    async with aiohttp.ClientSession() as http:
        assert await _statuses(http, gw, 3) == [200, 200, 429]
        keys = await asyncio.to_thread(primary.command, "KEYS", "qsys-gateway:gcra:*")
        assert "venue-a/hall/slow" in keys, keys
        await asyncio.to_thread(primary.kill)
        started = time.monotonic()
        failed_over_at = None
        # 20 calls/s against 2 calls/s (burst 2) until well after the fail-over.
        while time.monotonic() - started < 25:
            for status in await _statuses(http, gw, 1):
                seen[status] += 1
            if failed_over_at is None and all(s.primary_port() == replica.port for s in watching):
                failed_over_at = time.monotonic()
            if failed_over_at is not None and time.monotonic() - failed_over_at > 3:
                break
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        assert failed_over_at is not None, "the sentinels never promoted the replica"
        # Nobody got a 500; the limit held (shared, or this replica's alone meanwhile):
        # at most the rate plus a bucket from Redis and one from memory.
        assert set(seen) <= {200, 429}, seen
        assert seen[429] > 0, seen
        assert seen[200] <= 2 * elapsed + 2 + 2 + 2, (seen, elapsed)
        # After the fail-over the buckets live in the promoted replica.
        await asyncio.to_thread(replica.command, "FLUSHALL")
        await asyncio.sleep(1.1)  # the fallback ends; Redis is tried again
        assert await _statuses(http, gw, 3) == [200, 200, 429]
        keys = await asyncio.to_thread(replica.command, "KEYS", "qsys-gateway:gcra:*")
        assert "venue-a/hall/slow" in keys, keys
    assert gw.metric("qsys_gateway_ratelimit_fallback_total") > 0
    assert gw.metric("qsys_gateway_ratelimit_storage_up") == 1
    messages = [line.get("message", "") for line in gw.log_lines()]
    assert any(m.startswith("rate-limit storage unreachable") for m in messages), messages
    assert "rate-limit storage reachable again" in messages
    assert url not in gw.stderr()
