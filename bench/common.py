"""Shared pieces of the benchmarks: results table, the processes under test (from the test kit,
qsys_testkit), a pipelined QRC load."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson

from qsys_protocol.qrc.framing import FrameDecoder
from qsys_testkit import LOOPBACK, GatewayProcess, SimulatorProcess, gateway_config, subject
from qsys_testkit.gateway import Readiness

BENCH_TOKEN_KEY = b"bench-token-key-0123456789abcdefghijklmnop"


@dataclass(slots=True)
class Result:
    """One row of the table: a scenario of one benchmark."""

    target: str  # what was measured: "simulator", later "gateway/http", ...
    scenario: str  # e.g. "Control.Get, 50 clients x window 16"
    requests: int
    errors: int
    seconds: float
    latencies: list[float] = field(repr=False, default_factory=list)
    baseline: Result | None = field(repr=False, default=None)  # the direct row it compares to
    cpu_per_request: float | None = None  # CPU seconds the server process spent per reply
    cpu_split: CpuSplit | None = field(repr=False, default=None)  # every process's CPU, if taken

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
    notes: list[str] = field(default_factory=list)  # printed after the table (target checks)
    baseline: Path | None = None
    """A source tree (a checkout of another commit) whose gateway runs beside this one, its
    rows taken alternately with this gateway's in the same run (`--baseline`)."""
    baseline_python: Path | None = None
    """The interpreter the baseline's gateway runs under (`--baseline-python`; None: this
    one): with the baseline the same tree, the two rows compare Python versions."""
    rounds: int = 1  # gateway scenarios are run this often (alternately); the median is kept
    idle_clients: int = 10_000  # idle logged-on clients per transport in the memory check
    cores: int | None = None  # operator_scale: QSysCores (None: its default)
    policies: int | None = None  # operator_scale: AccessPolicies (None: two per core)


def _versus(r: Result) -> str:
    b = r.baseline
    if b is None or not b.rps:
        return ""
    extra = (r.percentile(99) - b.percentile(99)) * 1000
    return f"{r.rps / b.rps:.2f}x req/s, p99 {extra:+.2f} ms"


def _cpu(r: Result) -> str:
    return "" if r.cpu_per_request is None else f"{r.cpu_per_request * 1e6:.0f}"


def format_table(results: list[Result]) -> str:
    header: tuple[str, ...] = ("target", "scenario", "req/s", "p50 ms", "p99 ms", "requests")
    header += ("errors",)
    compare = any(r.baseline is not None for r in results)
    cpu = any(r.cpu_per_request is not None for r in results)
    if cpu:
        header += ("CPU us/req",)
    if compare:
        header += ("vs direct",)
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
        + ((_cpu(r),) if cpu else ())
        + ((_versus(r),) if compare else ())
        for r in results
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    last = len(header) - 1
    for row in rows:
        cells = [
            c.ljust(w) if i < 2 or (compare and i == last) else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine spent busy so far (all but idle and iowait, from
    /proc/stat): every process, this benchmark's and everyone else's."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class CpuSplit:
    """CPU time of named processes and of the whole machine over one load: who used the
    CPUs, beside how many calls were answered (`start`, then `stop` after the load)."""

    pids: dict[str, int]
    seconds: float = 0.0
    used: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds
    machine: float = 0.0  # busy CPU seconds machine-wide, the processes above included
    calls: int = 0  # replies over the same time (warm-up included), set by the caller
    _start: tuple[float, float, dict[str, float]] | None = field(default=None, init=False)

    def start(self) -> None:
        self._start = (time.perf_counter(), machine_busy_seconds(), self._sample())

    def stop(self) -> None:
        assert self._start is not None, "CpuSplit.stop before start"
        wall, machine, cpu = self._start
        self.seconds = time.perf_counter() - wall
        self.machine = machine_busy_seconds() - machine
        self.used = {name: t - cpu[name] for name, t in self._sample().items()}

    def _sample(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def cores(self, name: str) -> float:
        """Cores the process kept busy on average (1.0: one CPU all the time)."""
        return self.used[name] / self.seconds if self.seconds else 0.0

    def per_call(self, name: str) -> float:
        """CPU seconds the process spent per call."""
        return self.used[name] / self.calls if self.calls else 0.0

    def others(self) -> float:
        """Cores the rest of the machine kept busy meanwhile."""
        return max(0.0, self.machine - sum(self.used.values())) / (self.seconds or 1.0)


def simulator() -> SimulatorProcess:
    """`qsys-core-sim` for a benchmark (start it with `with`): quiet, never idles out."""
    return SimulatorProcess("--idle-timeout", "600", "--log-level", "WARNING")


def gateway(
    core_port: int,
    *,
    token: str,
    methods: list[str],
    max_clients: int,
    ready: Readiness = None,
    source: Path | None = None,
    python: Path | None = None,
) -> GatewayProcess:
    """`qsys-gateway` (start it with `with`) on free loopback ports with one subject "bench"
    and a limiter too generous to throttle a benchmark. The token is stored as the operator
    renders it (keyed hash). `source`: a source tree whose gateway and protocol packages
    run instead of the installed ones (a baseline); `python`: the interpreter it runs under
    (an environment with the gateway's dependencies; the packages come from `source`)."""
    config = gateway_config(
        core_port,
        [subject("bench", token, methods=methods, key=BENCH_TOKEN_KEY)],
        max_clients=max_clients,
        requests_per_second=100_000,
        burst=100_000,
        request_timeout=5,
    )
    # Room for the WebSocket clients (HTTP connections) beside the others.
    config["limits"]["maxHttpConnections"] = max(4096, max_clients + 256)
    args = ("--log-level", "WARNING")
    env = {}
    if source is not None:
        paths = [str(source / "gateway"), str(source / "protocol")]
        env["PYTHONPATH"] = os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])
    command = None if python is None else [str(python), "-m", "qsys_gateway.cli"]
    return GatewayProcess(
        config, ready=ready, args=args, token_key=BENCH_TOKEN_KEY, env=env, command=command
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


LOGON_ID = 0


class _PipelinedClient(asyncio.Protocol):
    """Keeps `window` requests in flight on one QRC socket; replies are matched by id
    (a gateway may answer a connection's calls out of order)."""

    def __init__(self, load: QrcLoad) -> None:
        self.load = load
        self.decoder = FrameDecoder(2**20)
        self.sent: dict[int, float] = {}
        self.transport: asyncio.Transport | None = None
        self.next_id = 1
        self.greeted = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()
        self.logged_on: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.logon_sent = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def start(self, window: int) -> None:
        self.transport_write(b"".join(self._request() for _ in range(window)))

    def _request(self) -> bytes:
        rid = self.next_id
        self.next_id += 1
        self.sent[rid] = time.perf_counter()
        return self.load.encode(rid)

    def transport_write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def logon(self, user: str, password: str) -> None:
        self.logon_sent = True
        params = {"User": user, "Password": password}
        msg = {"jsonrpc": "2.0", "method": "Logon", "params": params, "id": LOGON_ID}
        self.transport_write(orjson.dumps(msg) + b"\x00")

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
            rid = msg["id"]
            if rid == LOGON_ID:
                if "error" in msg:
                    self.logged_on.set_exception(ConnectionError(f"Logon refused: {msg}"))
                else:
                    self.logged_on.set_result(None)
                continue
            now = time.perf_counter()
            sent = self.sent.pop(rid)
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
        if self.logon_sent and not self.logged_on.done():
            self.logged_on.set_exception(ConnectionError("connection lost before Logon"))


class Recorder:
    """Counts replies while measuring; `running` goes false at the end (or at the bound)."""

    def __init__(self, max_requests: int) -> None:
        self.max_requests = max_requests
        self.measuring = False
        self.running = True
        self.requests = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.replies = 0  # warm-up included

    def record(self, latency: float, error: bool) -> None:
        self.replies += 1
        if not self.measuring:
            return
        self.requests += 1
        self.errors += error
        self.latencies.append(latency)
        if self.requests >= self.max_requests:
            self.running = False

    async def measure(self, ctx: BenchContext, workers: Sequence[asyncio.Future[None]]) -> float:
        """Warm up, count for `ctx.duration`, stop the workers; returns the measured seconds."""
        try:
            await asyncio.sleep(ctx.warmup)
            self._check(workers)
            self.measuring = True
            start = time.perf_counter()
            deadline = start + ctx.duration
            while self.running and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
                self._check(workers)
            elapsed = time.perf_counter() - start
            self.measuring = False
            self.running = False
            await asyncio.wait_for(asyncio.gather(*workers), 10)
            return elapsed
        finally:
            for w in workers:
                w.cancel()

    @staticmethod
    def _check(workers: Sequence[asyncio.Future[None]]) -> None:
        for w in workers:
            if w.done() and not w.cancelled() and w.exception() is not None:
                raise cast(BaseException, w.exception())


class QrcLoad(Recorder):
    """Closed-loop pipelined load: `clients` sockets x `window` requests in flight each."""

    def __init__(self, method: str, params: Any, max_requests: int) -> None:
        super().__init__(max_requests)
        self._prefix = orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params})[:-1]

    def encode(self, rid: int) -> bytes:
        return self._prefix + b',"id":' + str(rid).encode() + b"}\x00"

    async def run(
        self,
        port: int,
        clients: int,
        ctx: BenchContext,
        target: str,
        scenario: str,
        *,
        window: int | None = None,
        logon: tuple[str, str] | None = None,
    ) -> Result:
        """`logon` = (user, password) is sent first (a gateway's QRC listener needs it)."""
        loop = asyncio.get_running_loop()
        protos: list[_PipelinedClient] = []
        try:
            for _ in range(clients):
                _, proto = await loop.create_connection(
                    lambda: _PipelinedClient(self), LOOPBACK, port
                )
                protos.append(proto)
            await asyncio.wait_for(asyncio.gather(*(p.greeted for p in protos)), 10)
            if logon is not None:
                for p in protos:
                    p.logon(*logon)
                await asyncio.wait_for(asyncio.gather(*(p.logged_on for p in protos)), 10)
            for p in protos:
                p.start(window or ctx.window)
            elapsed = await self.measure(ctx, [p.done for p in protos])
        finally:
            for p in protos:
                if p.transport is not None:
                    p.transport.close()
        return Result(target, scenario, self.requests, self.errors, elapsed, self.latencies)
