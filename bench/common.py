"""Shared pieces of the benchmarks: results table, simulator subprocess, a pipelined QRC load."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson

from qsys_gateway.qrc.framing import FrameDecoder

LOOPBACK = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent


@dataclass(slots=True)
class Result:
    """One row of the table: a scenario of one benchmark."""

    target: str  # what was measured: "simulator", later "gateway/http", ...
    scenario: str  # e.g. "Control.Get, 50 clients x window 16"
    requests: int
    errors: int
    seconds: float
    latencies: list[float] = field(repr=False, default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass(slots=True)
class BenchContext:
    duration: float = 3.0  # measured seconds per scenario
    warmup: float = 0.5
    window: int = 16  # requests in flight per client
    max_requests: int = 2_000_000  # hard bound per scenario


def format_table(results: list[Result]) -> str:
    header = ("target", "scenario", "req/s", "p50 ms", "p99 ms", "requests", "errors")
    rows = [
        (
            r.target,
            r.scenario,
            f"{r.rps:,.0f}",
            f"{r.percentile(50) * 1000:.2f}",
            f"{r.percentile(99) * 1000:.2f}",
            f"{r.requests:,}",
            str(r.errors),
        )
        for r in results
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def sim_process(*args: str) -> Iterator[int]:
    """Run `qsys-core-sim` on a free loopback port; yields the port, always stops the process."""
    port = free_port()
    cmd = [str(VENV_BIN / "qsys-core-sim"), "--host", LOOPBACK, "--port", str(port)]
    cmd += ["--log-level", "WARNING", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env={**os.environ})
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"qsys-core-sim exited with {proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("qsys-core-sim did not start listening")
            time.sleep(0.05)
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class _PipelinedClient(asyncio.Protocol):
    """Keeps `window` requests in flight on one QRC socket; replies arrive in order."""

    def __init__(self, load: QrcLoad) -> None:
        self.load = load
        self.decoder = FrameDecoder(2**20)
        self.sent: deque[float] = deque()
        self.transport: asyncio.Transport | None = None
        self.next_id = 1
        self.greeted = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def start(self, window: int) -> None:
        self.transport_write(b"".join(self._request() for _ in range(window)))

    def _request(self) -> bytes:
        rid = self.next_id
        self.next_id += 1
        self.sent.append(time.perf_counter())
        return self.load.encode(rid)

    def transport_write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        load = self.load
        out = []
        for frame in self.decoder.feed(data):
            assert isinstance(frame, bytes)
            msg: dict[str, Any] = orjson.loads(frame)
            if "id" not in msg:  # EngineStatus and other pushes
                if not self.greeted.done():
                    self.greeted.set_result(None)
                continue
            now = time.perf_counter()
            sent = self.sent.popleft()
            load.record(now - sent, "error" in msg)
            if load.running:
                out.append(self._request())
            elif not self.sent and not self.done.done():
                self.done.set_result(None)
        if out:
            self.transport_write(b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"connection lost: {exc}"))
        if not self.greeted.done():
            self.greeted.set_exception(ConnectionError("connection lost before EngineStatus"))


class QrcLoad:
    """Closed-loop pipelined load: `clients` sockets x `window` requests in flight each."""

    def __init__(self, method: str, params: Any, max_requests: int) -> None:
        self._prefix = orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params})[:-1]
        self.max_requests = max_requests
        self.measuring = False
        self.running = True
        self.requests = 0
        self.errors = 0
        self.latencies: list[float] = []

    def encode(self, rid: int) -> bytes:
        return self._prefix + b',"id":' + str(rid).encode() + b"}\x00"

    def record(self, latency: float, error: bool) -> None:
        if not self.measuring:
            return
        self.requests += 1
        self.errors += error
        self.latencies.append(latency)
        if self.requests >= self.max_requests:
            self.running = False

    async def run(
        self, port: int, clients: int, ctx: BenchContext, target: str, scenario: str
    ) -> Result:
        loop = asyncio.get_running_loop()
        protos: list[_PipelinedClient] = []
        try:
            for _ in range(clients):
                _, proto = await loop.create_connection(
                    lambda: _PipelinedClient(self), LOOPBACK, port
                )
                protos.append(proto)
            await asyncio.wait_for(asyncio.gather(*(p.greeted for p in protos)), 10)
            for p in protos:
                p.start(ctx.window)
            await asyncio.sleep(ctx.warmup)
            self.measuring = True
            start = time.perf_counter()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ctx.duration):
                    while self.running:
                        await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - start
            self.measuring = False
            self.running = False
            await asyncio.wait_for(asyncio.gather(*(p.done for p in protos)), 10)
        finally:
            for p in protos:
                if p.transport is not None:
                    p.transport.close()
        return Result(target, scenario, self.requests, self.errors, elapsed, self.latencies)
