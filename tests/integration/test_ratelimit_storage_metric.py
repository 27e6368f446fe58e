"""`qsys_gateway_ratelimit_storage_up` (behind QSysGatewayRateLimitStorageDown) against a
real redis-server: 1 while Redis answers, 0 once it is gone, probed per scrape without traffic."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway_harness import GatewayFactory

from qsys_testkit import RedisProcess

METRIC = "qsys_gateway_ratelimit_storage_up"


async def test_storage_gauge_follows_redis(
    module_sim_port: int, make_gateway: GatewayFactory, qsys_redis: RedisProcess
) -> None:
    def edit(c: dict[str, Any]) -> None:
        c["limits"]["storage"] = qsys_redis.url

    gw = await asyncio.to_thread(make_gateway, module_sim_port, edit)
    assert await asyncio.to_thread(gw.metric, METRIC) == 1.0
    qsys_redis.kill()
    assert await asyncio.to_thread(gw.metric, METRIC) == 0.0


async def test_memory_storage_is_always_up(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = await asyncio.to_thread(make_gateway, module_sim_port)
    assert await asyncio.to_thread(gw.metric, METRIC) == 1.0
