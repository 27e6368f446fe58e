"""pytest fixtures of the test kit: `pytest_plugins = ["qsys_testkit.pytest_plugin"]`.

Each factory stops everything it started when the test ends, passed or not. The
in-process simulator fixture needs pytest-asyncio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from qsys_core_sim.server import CoreSimulator

from .gateway import GatewayProcess
from .net import LOOPBACK
from .redis import RedisProcess
from .simulator import SimulatorProcess

SimulatorFactory = Callable[..., Awaitable[CoreSimulator]]
SimulatorProcessFactory = Callable[..., SimulatorProcess]
GatewayProcessFactory = Callable[..., GatewayProcess]


@pytest_asyncio.fixture
async def qsys_simulator() -> AsyncIterator[SimulatorFactory]:
    """`await qsys_simulator(**CoreSimulator options)`: started in this event loop on a
    free loopback port."""
    started: list[CoreSimulator] = []

    async def factory(**kwargs: Any) -> CoreSimulator:
        kwargs.setdefault("host", LOOPBACK)
        kwargs.setdefault("port", 0)
        sim = CoreSimulator(**kwargs)
        started.append(sim)
        return await sim.start()

    try:
        yield factory
    finally:
        for sim in started:
            await sim.close()


@pytest.fixture
def qsys_simulator_process(tmp_path: Path) -> Iterator[SimulatorProcessFactory]:
    """`qsys_simulator_process(*cli_args)`: a started `qsys-core-sim`, its output in
    tmp_path (`.output()`)."""
    started: list[SimulatorProcess] = []

    def factory(*args: str, **kwargs: Any) -> SimulatorProcess:
        kwargs.setdefault("log", tmp_path / f"simulator-{len(started)}.log")
        sim = SimulatorProcess(*args, **kwargs)
        started.append(sim)
        return sim.start()

    try:
        yield factory
    finally:
        for sim in started:
            sim.stop()


@pytest.fixture
def qsys_gateway_process(tmp_path: Path) -> Iterator[GatewayProcessFactory]:
    """`qsys_gateway_process(config, *, start=True, **GatewayProcess options)`: a gateway
    in a directory of its own under tmp_path."""
    started: list[GatewayProcess] = []

    def factory(config: dict[str, Any], *, start: bool = True, **kwargs: Any) -> GatewayProcess:
        directory = tmp_path / f"gateway-{len(started)}"
        directory.mkdir()
        gw = GatewayProcess(config, directory, **kwargs)
        started.append(gw)
        return gw.start() if start else gw

    try:
        yield factory
    finally:
        for gw in started:
            gw.stop()


@pytest.fixture
def qsys_redis() -> Iterator[RedisProcess]:
    """A started redis-server on a free loopback port (`.url`)."""
    with RedisProcess() as server:
        yield server
