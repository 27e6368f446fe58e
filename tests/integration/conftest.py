"""Fixtures for the gateway integration tests: the real gateway process and the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gateway_harness import (
    Gateway,
    GatewayFactory,
    RedisServer,
    SimProcess,
    base_config,
    running_sim,
)


@pytest.fixture(scope="module")
def module_sim() -> Iterator[SimProcess]:
    """A simulator subprocess shared by the tests of one module."""
    with running_sim() as sim:
        yield sim


@pytest.fixture(scope="module")
def shared_gateway(
    module_sim: SimProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """One gateway for the tests of a module that do not change its config."""
    gw = Gateway(tmp_path_factory.mktemp("gw"), base_config(module_sim.port))
    try:
        yield gw.start()
    finally:
        gw.stop()


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start gateways (config = base_config(core_port) changed by `edit`); all are stopped."""
    started: list[Gateway] = []

    def factory(
        core_port: int,
        edit: Callable[[dict[str, Any]], None] | None = None,
        *,
        start: bool = True,
        core_host: str = "127.0.0.1",
    ) -> Gateway:
        config = base_config(core_port, core_host)
        if edit is not None:
            edit(config)
        directory = tmp_path / f"gw{len(started)}"
        directory.mkdir()
        gw = Gateway(directory, config)
        started.append(gw)
        return gw.start() if start else gw

    try:
        yield factory
    finally:
        for gw in started:
            gw.stop()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture(scope="module")
def module_sim_port(module_sim: SimProcess) -> int:
    return module_sim.port
