"""Fixtures for the gateway integration tests: the real gateway process and the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from gateway_harness import GatewayFactory, base_config

from qsys_testkit import LOOPBACK, GatewayProcess, SimulatorProcess

if TYPE_CHECKING:
    from qsys_testkit.pytest_plugin import GatewayProcessFactory


@pytest.fixture(scope="module")
def module_sim() -> Iterator[SimulatorProcess]:
    """A simulator subprocess shared by the tests of one module."""
    with SimulatorProcess() as sim:
        yield sim


@pytest.fixture(scope="module")
def shared_gateway(
    module_sim: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """One gateway for the tests of a module that do not change its config."""
    with GatewayProcess(base_config(module_sim.port), tmp_path_factory.mktemp("gw")) as gw:
        yield gw


@pytest.fixture
def make_gateway(qsys_gateway_process: GatewayProcessFactory) -> GatewayFactory:
    """Start gateways (config = base_config(core_port) changed by `edit`); all are stopped."""

    def factory(
        core_port: int,
        edit: Callable[[dict[str, Any]], None] | None = None,
        *,
        start: bool = True,
        core_host: str = LOOPBACK,
    ) -> GatewayProcess:
        config = base_config(core_port, core_host)
        if edit is not None:
            edit(config)
        return qsys_gateway_process(config, start=start)

    return factory


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture(scope="module")
def module_sim_port(module_sim: SimulatorProcess) -> int:
    return module_sim.port
