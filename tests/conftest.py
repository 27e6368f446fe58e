"""Fixtures shared by every test suite: a simulated Core, QRC clients, raw sockets, subprocesses.

Everything listens on 127.0.0.1 and everything a fixture starts is stopped in
its teardown, whether the test passed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from qsys_core_sim.server import CoreSimulator
from qsys_protocol.qrc.client import QrcClient

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(
    port: int, timeout: float = 10.0, proc: subprocess.Popen[Any] | None = None
) -> None:
    """Block until something accepts TCP connections on loopback `port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit in `timeout`; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


class RawClient:
    """A plain asyncio socket speaking NUL-framed bytes, for tests of malformed input."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, host: str = LOOPBACK) -> RawClient:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=4 * 2**20), 5.0
        )
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_json(self, message: Any) -> None:
        await self.send(orjson.dumps(message) + b"\x00")

    async def recv(self, timeout: float = 5.0) -> Any:
        """The next frame, decoded."""
        frame = await asyncio.wait_for(self.reader.readuntil(b"\x00"), timeout)
        return orjson.loads(frame[:-1])

    async def recv_reply(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame that is not a pushed notification."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.recv(timeout)
                if "method" not in msg:
                    assert isinstance(msg, dict)
                    return msg

    async def call(self, method: str, params: Any = None, rid: int = 1) -> dict[str, Any]:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        await self.send_json(msg)
        return await self.recv_reply()

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """Read until EOF (discarding frames); True when the peer closed within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


SimFactory = Callable[..., Awaitable[CoreSimulator]]
ClientFactory = Callable[..., Awaitable[QrcClient]]
RawFactory = Callable[..., Awaitable[RawClient]]


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    """Start in-process simulators with any CoreSimulator options; all are stopped afterwards."""
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
            await sim.stop()


@pytest.fixture
async def sim(make_sim: SimFactory) -> CoreSimulator:
    """A started simulator with the built-in design on an ephemeral loopback port."""
    return await make_sim(idle_timeout=30.0)


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """Open QrcClients to loopback ports; all are closed afterwards."""
    clients: list[QrcClient] = []

    async def factory(port: int, **kwargs: Any) -> QrcClient:
        client = await QrcClient.connect(LOOPBACK, port, **kwargs)
        clients.append(client)
        return client

    try:
        yield factory
    finally:
        for client in clients:
            await client.close()


@pytest.fixture
async def qrc_client(sim: CoreSimulator, make_client: ClientFactory) -> QrcClient:
    """A QrcClient connected to `sim` (its EngineStatus is left in `notifications`)."""
    return await make_client(sim.port)


@pytest.fixture
async def make_raw() -> AsyncIterator[RawFactory]:
    """Open plain NUL-framing sockets to loopback ports; all are closed afterwards."""
    clients: list[RawClient] = []

    async def factory(port: int) -> RawClient:
        client = await RawClient.connect(port)
        clients.append(client)
        return client

    try:
        yield factory
    finally:
        for client in clients:
            await client.close()


@pytest.fixture
async def raw_client(sim: CoreSimulator, make_raw: RawFactory) -> RawClient:
    """A raw socket to `sim` that has already consumed the EngineStatus push."""
    client = await make_raw(sim.port)
    hello = await client.recv()
    assert hello["method"] == "EngineStatus"
    return client


@pytest.fixture
def run_process() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start subprocesses (text mode, stdout/stderr piped); each is SIGTERMed/killed afterwards."""
    procs: list[subprocess.Popen[str]] = []

    def factory(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        kwargs.setdefault("cwd", REPO)
        kwargs.setdefault("env", {**os.environ, "PYTHONUNBUFFERED": "1"})
        proc = subprocess.Popen(args, **kwargs)
        procs.append(proc)
        return proc

    try:
        yield factory
    finally:
        for proc in procs:
            stop_process(proc)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


class SimProcess:
    """A `qsys-core-sim` subprocess listening on loopback `port`."""

    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port

    def stop(self, timeout: float = 5.0) -> int:
        return stop_process(self.proc, timeout)


@pytest.fixture
def start_sim_process(
    run_process: Callable[..., subprocess.Popen[str]],
) -> Callable[..., SimProcess]:
    """Run the `qsys-core-sim` CLI (extra args allowed) on a free loopback port; waits for it."""

    def factory(*args: str, timeout: float = 15.0) -> SimProcess:
        port = free_port()
        cmd = [str(VENV_BIN / "qsys-core-sim"), "--host", LOOPBACK, "--port", str(port), *args]
        proc = run_process(cmd)
        wait_for_port(port, timeout, proc)
        return SimProcess(proc, port)

    return factory


@pytest.fixture
def unused_port() -> int:
    return free_port()
