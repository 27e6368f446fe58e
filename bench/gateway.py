"""The gateway against its direct-to-simulator baseline, over HTTP, WebSocket and QRC.

Every figure here comes from one run: a `qsys-core-sim` subprocess, measured
directly, then through a `qsys-gateway` subprocess in front of it. Each gateway
row carries the direct row with the same clients x in-flight requests as its
baseline; the direct rows carry the simulator's own CPU per call, the gateway rows the
gateway's. With `--baseline DIR` a second gateway (DIR's source) takes every scenario
too, alternately with this one. Then the target checks: CPU per call per transport, the
p50 and p99 the gateway adds, throughput, and the memory an idle logged-on WebSocket
or raw QRC client costs (a fresh gateway each, `--idle-clients`, 10,000 by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson

from qsys_protocol.qrc.framing import FrameDecoder
from qsys_testkit import LOOPBACK, GatewayProcess

from .common import (
    BenchContext,
    CpuSplit,
    QrcLoad,
    Recorder,
    Result,
    cpu_seconds,
    gateway,
    rss_kib,
    simulator,
)

SUBJECT = "bench"
TOKEN = "bench-token-5f0c2a9e7d1b4c3a8e6f"
METHOD = "Control.Get"
PARAMS = ["MainGain"]

WIDE_WINDOW = 8
"""In flight per client with 50 clients: 400 in all, under what the gateway queues to the
Core (2 upstream connections x 256 pending); more would be refused as Core-busy (503)."""

OPEN_LOOP_RATE = 500.0
OPEN_LOOP_CLIENTS = 10

# Targets (2-core machine).
TARGET_ADDED_P99_MS = 2.0
TARGET_ADDED_P50_MS = 0.1
TARGET_HTTP_RPS = 2000.0
TARGET_STREAM_CPU_US = 35.0
TARGET_HTTP_CPU_US = 100.0
TARGET_QRC_RATIO = 0.5
TARGET_IDLE_KIB = {"ws": 16.0, "qrc": 8.0}


# ---- processes -------------------------------------------------------------------


def _gateway(
    core_port: int,
    source: Path | None = None,
    *,
    max_clients: int = 1100,
    python: Path | None = None,
) -> GatewayProcess:
    """`qsys-gateway` in front of the simulator on `core_port` (`source`: a baseline's
    source tree, `python` its interpreter); `with` starts it and waits until it is healthy
    (connected to the Core)."""
    return gateway(
        core_port,
        token=TOKEN,
        methods=[METHOD],
        max_clients=max_clients,
        ready="healthz",
        source=source,
        python=python,
    )


def open_files_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return f"{soft}/{hard}"
    return "?"


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---- closed-loop loads -----------------------------------------------------------


_BODY = {"jsonrpc": "2.0", "method": METHOD, "params": PARAMS}


async def http_load(
    gw: GatewayProcess,
    clients: int,
    ctx: BenchContext,
    target: str,
    scenario: str,
    *,
    method: str = METHOD,
    params: Any = PARAMS,
) -> Result:
    """`clients` keep-alive connections, each with one request in flight (HTTP/1.1)."""
    rec = Recorder(ctx.max_requests)
    cpu = cpu_seconds(gw.pid)
    url = f"http://{LOOPBACK}:{gw.http_port}/v1/rpc"
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            rid = 0
            while rec.running:
                rid += 1
                body = orjson.dumps(
                    {"jsonrpc": "2.0", "method": method, "params": params, "id": rid}
                )
                sent = time.perf_counter()
                async with session.post(url, data=body) as resp:
                    reply = orjson.loads(await resp.read())
                    error = resp.status != 200 or "error" in reply
                rec.record(time.perf_counter() - sent, error)

        loop = asyncio.get_running_loop()
        workers = [loop.create_task(worker()) for _ in range(clients)]
        elapsed = await rec.measure(ctx, workers)
    return _result(rec, target, scenario, elapsed, gw, cpu)


def _result(
    rec: Recorder | QrcLoad,
    target: str,
    scenario: str,
    elapsed: float,
    gw: GatewayProcess | None = None,
    cpu: float = 0.0,
) -> Result:
    r = Result(target, scenario, rec.requests, rec.errors, elapsed, rec.latencies)
    if gw is not None and rec.replies:
        r.cpu_per_request = (cpu_seconds(gw.pid) - cpu) / rec.replies
    return r


async def _ws_connect(
    session: aiohttp.ClientSession, gw: GatewayProcess
) -> aiohttp.ClientWebSocketResponse:
    return await session.ws_connect(
        f"http://{LOOPBACK}:{gw.http_port}/v1/ws",
        headers={"Authorization": f"Bearer {TOKEN}"},
        autoping=True,
        heartbeat=None,
    )


async def ws_load(
    gw: GatewayProcess, clients: int, window: int, ctx: BenchContext, target: str, scenario: str
) -> Result:
    """`clients` WebSocket connections, each with `window` requests in flight (by id)."""
    rec = Recorder(ctx.max_requests)
    cpu = cpu_seconds(gw.pid)
    prefix = orjson.dumps(_BODY)[:-1] + b',"id":'
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        sockets = [await _ws_connect(session, gw) for _ in range(clients)]

        async def worker(ws: aiohttp.ClientWebSocketResponse) -> None:
            sent: dict[int, float] = {}
            next_id = 1

            async def send_one() -> None:
                nonlocal next_id
                rid = next_id
                next_id += 1
                sent[rid] = time.perf_counter()
                await ws.send_str((prefix + str(rid).encode() + b"}").decode())

            for _ in range(window):
                await send_one()
            while sent:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"WebSocket closed during the benchmark: {msg.type}")
                reply = orjson.loads(msg.data)
                rid = reply.get("id")
                if rid is None:
                    continue  # EngineStatus push
                rec.record(time.perf_counter() - sent.pop(rid), "error" in reply)
                if rec.running:
                    await send_one()

        loop = asyncio.get_running_loop()
        try:
            workers = [loop.create_task(worker(ws)) for ws in sockets]
            elapsed = await rec.measure(ctx, workers)
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return _result(rec, target, scenario, elapsed, gw, cpu)


# ---- open loop: a fixed request rate ---------------------------------------------


class _RateClient(asyncio.Protocol):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.decoder = FrameDecoder(2**20)
        self.transport: asyncio.Transport | None = None
        self.sent: dict[int, float] = {}
        loop = asyncio.get_running_loop()
        self.greeted: asyncio.Future[None] = loop.create_future()
        self.logged_on: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, msg: dict[str, Any]) -> None:
        assert self.transport is not None
        if msg.get("id"):
            self.sent[msg["id"]] = time.perf_counter()
        self.transport.write(orjson.dumps(msg) + b"\x00")

    def data_received(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            assert isinstance(frame, bytes)
            msg: dict[str, Any] = orjson.loads(frame)
            rid = msg.get("id")
            if rid is None:
                if not self.greeted.done():
                    self.greeted.set_result(None)
            elif rid == 0:
                if "error" in msg:
                    self.logged_on.set_exception(ConnectionError(f"Logon refused: {msg}"))
                else:
                    self.logged_on.set_result(None)
            else:
                self.rec.record(time.perf_counter() - self.sent.pop(rid), "error" in msg)

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.greeted, self.logged_on, self.lost):
            if not fut.done():
                fut.set_exception(ConnectionError(f"connection lost: {exc}"))
                fut.exception()  # raised to whoever awaits it; not logged if nobody does


async def rate_load(
    port: int, ctx: BenchContext, target: str, *, logon: bool, gw: GatewayProcess | None = None
) -> Result:
    """Open loop over QRC: OPEN_LOOP_RATE requests/s spread round-robin over
    OPEN_LOOP_CLIENTS sockets, sent on schedule whatever the replies do."""
    rec = Recorder(ctx.max_requests)
    cpu = cpu_seconds(gw.pid) if gw is not None else 0.0
    loop = asyncio.get_running_loop()
    protos: list[_RateClient] = []
    try:
        for _ in range(OPEN_LOOP_CLIENTS):
            _, proto = await loop.create_connection(lambda: _RateClient(rec), LOOPBACK, port)
            protos.append(proto)
        await asyncio.wait_for(asyncio.gather(*(p.greeted for p in protos)), 10)
        if logon:
            logon_msg = {"method": "Logon", "params": {"User": SUBJECT, "Password": TOKEN}}
            for p in protos:
                p.send({"jsonrpc": "2.0", **logon_msg, "id": 0})
            await asyncio.wait_for(asyncio.gather(*(p.logged_on for p in protos)), 10)

        async def ticker() -> None:
            start = loop.time()
            n = 0
            while rec.running:
                n += 1
                protos[n % len(protos)].send({**_BODY, "id": n})
                delay = start + n / OPEN_LOOP_RATE - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)

        task = loop.create_task(ticker())
        elapsed = await rec.measure(ctx, [task])
        await asyncio.sleep(0.2)  # the last replies
        for p in protos:
            if p.lost.done():
                p.lost.result()
    finally:
        for p in protos:
            if p.transport is not None:
                p.transport.close()
    per_client = OPEN_LOOP_RATE / OPEN_LOOP_CLIENTS
    scenario = f"open loop {OPEN_LOOP_RATE:g}/s: {OPEN_LOOP_CLIENTS} clients x {per_client:g}/s"
    return _result(rec, target, scenario, elapsed, gw, cpu)


# ---- memory ----------------------------------------------------------------------


async def idle_memory(gw: GatewayProcess, count: int, transport: str) -> tuple[int, int, int]:
    """RSS of the gateway (KiB) with one warm-up client, then with `count` more idle
    logged-on clients of `transport` ("ws": bearer token in the upgrade; "qrc": a raw
    socket that sends Logon), connected 50 at a time, and how many of them the gateway
    refused or closed; every client is closed at the end."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        protos: list[_RateClient] = []
        idle = Recorder(1)
        loop = asyncio.get_running_loop()

        async def one() -> None:
            if transport == "ws":
                sockets.append(await _ws_connect(session, gw))
                return
            _, proto = await loop.create_connection(
                lambda: _RateClient(idle), LOOPBACK, gw.qrc_port
            )
            protos.append(proto)
            await asyncio.wait_for(proto.greeted, 10)
            logon = {"method": "Logon", "params": {"User": SUBJECT, "Password": TOKEN}}
            proto.send({"jsonrpc": "2.0", **logon, "id": 0})
            await asyncio.wait_for(proto.logged_on, 10)

        try:
            await one()
            await asyncio.sleep(1.0)
            before = rss_kib(gw.pid)
            gate = asyncio.Semaphore(50)

            async def connect() -> bool:
                async with gate:
                    try:
                        await one()
                    except (OSError, aiohttp.ClientError, TimeoutError):
                        return False
                    return True

            connected = await asyncio.gather(*(connect() for _ in range(count)))
            await asyncio.sleep(2.0)  # settle: every handler has run its logon
            lost = sum(ws.closed for ws in sockets) + sum(p.lost.done() for p in protos)
            refused = connected.count(False) + lost
            after = rss_kib(gw.pid)
        finally:
            for p in protos:
                if p.transport is not None:
                    p.transport.close()
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return before, after, refused


# ---- the table -------------------------------------------------------------------


def _clients(n: int) -> str:
    return f"{n} client{'s' if n > 1 else ''}"


def _scenario(clients: int, window: int) -> str:
    return f"{METHOD}, {_clients(clients)} x {window} in flight"


async def _qrc_load(
    port: int,
    clients: int,
    window: int,
    ctx: BenchContext,
    target: str,
    pids: dict[str, int],
    logon: tuple[str, str] | None = None,
) -> Result:
    """Raw QRC at `port` with the CPU of every process in `pids` taken over the load
    (`Result.cpu_split`); a "gateway" among them gives the row its CPU per call."""
    load = QrcLoad(METHOD, PARAMS, ctx.max_requests)
    split = CpuSplit(pids)
    split.start()
    r = await load.run(
        port, clients, ctx, target, _scenario(clients, window), window=window, logon=logon
    )
    split.stop()
    split.calls = load.replies
    r.cpu_split = split
    if "gateway" in pids and load.replies:
        r.cpu_per_request = split.per_call("gateway")
    return r


def _median(runs: list[Result]) -> Result:
    """The run with the median CPU per call (`--rounds`)."""
    return sorted(runs, key=lambda r: r.cpu_per_request or 0.0)[len(runs) // 2]


async def _load(
    transport: str,
    gw: GatewayProcess,
    sim_pid: int,
    clients: int,
    window: int,
    ctx: BenchContext,
    target: str,
) -> Result:
    if transport == "http":
        return await http_load(gw, clients, ctx, target, _scenario(clients, 1))
    if transport == "ws":
        return await ws_load(gw, clients, window, ctx, target, _scenario(clients, window))
    pids = {"load generator": os.getpid(), "gateway": gw.pid, "simulator": sim_pid}
    return await _qrc_load(gw.qrc_port, clients, window, ctx, target, pids, (SUBJECT, TOKEN))


async def run(ctx: BenchContext) -> list[Result]:
    nofile = raise_nofile()
    load_before = os.getloadavg()[0]
    results: list[Result] = []
    direct: dict[tuple[int, int], Result] = {}
    shapes = [(1, 1), (1, ctx.window), (50, 1), (50, WIDE_WINDOW)]
    stream_shapes = [(1, 1), (1, ctx.window), (50, WIDE_WINDOW)]
    memory: dict[str, tuple[int, int, int]] = {}
    direct_beside: dict[tuple[int, int], Result] = {}
    """The simulator direct, measured again in the rounds of the raw QRC rows (median
    req/s): the machine's load moves between the first rows and the gateway's."""

    with simulator() as sim:
        sim_port = sim.port
        for clients, window in shapes:
            load = QrcLoad(METHOD, PARAMS, ctx.max_requests)
            cpu = cpu_seconds(sim.pid)
            r = await load.run(
                sim_port, clients, ctx, "direct (QRC)", _scenario(clients, window), window=window
            )
            if load.replies:  # the simulator's own CPU per call, for scale
                r.cpu_per_request = (cpu_seconds(sim.pid) - cpu) / load.replies
            direct[clients, window] = r
            results.append(r)
        direct_rate = await rate_load(sim_port, ctx, "direct (QRC)", logon=False)
        results.append(direct_rate)

        # This gateway, and the baseline's beside it when given: each scenario is taken by
        # both in turn (baseline first), so machine load falls on both alike.
        with contextlib.ExitStack() as stack:
            gws = []
            if ctx.baseline is not None:
                theirs = _gateway(sim_port, ctx.baseline, python=ctx.baseline_python)
                gws.append(("baseline", stack.enter_context(theirs)))
            gws.append(("gateway", stack.enter_context(_gateway(sim_port))))
            gw_nofile = open_files_limit(gws[-1][1].pid)

            plan = [("http", c, 1) for c in (1, 50)]
            plan += [(t, c, w) for t in ("ws", "qrc") for c, w in stream_shapes]
            for transport, clients, window in plan:
                runs: dict[str, list[Result]] = {name: [] for name, _ in gws}
                beside: list[Result] = []
                for _ in range(ctx.rounds):
                    for name, gw in gws:
                        target = f"{name}/{transport}"
                        runs[name].append(
                            await _load(transport, gw, sim.pid, clients, window, ctx, target)
                        )
                    if transport == "qrc":  # the simulator again, beside the gateway's rows
                        pids = {"load generator": os.getpid(), "simulator": sim.pid}
                        beside.append(
                            await _qrc_load(sim_port, clients, window, ctx, "direct beside", pids)
                        )
                base = direct[clients, window]
                if beside:
                    base = sorted(beside, key=lambda r: r.rps)[len(beside) // 2]
                    direct_beside[clients, window] = base
                for name, _ in gws:
                    r = _median(runs[name])
                    r.baseline = base
                    results.append(r)
            for name, gw in gws:
                gw_rate = await rate_load(gw.qrc_port, ctx, f"{name}/qrc", logon=True, gw=gw)
                gw_rate.baseline = direct_rate
                results.append(gw_rate)

        for transport in ("ws", "qrc"):
            with _gateway(sim_port, max_clients=ctx.idle_clients + 100) as gw:
                memory[transport] = await idle_memory(gw, ctx.idle_clients, transport)

    _targets(ctx, results, {**direct, **direct_beside}, direct_rate, gw_rate, memory)
    ctx.notes.append(
        f"machine load average (1 min) {load_before:.1f} before the gateway benchmark, "
        f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs shared by load generator, "
        "gateway and simulator"
    )
    ctx.notes.append(
        f"open files: bench process soft limit {nofile}, gateway process (soft/hard) {gw_nofile}"
    )
    return results


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _targets(
    ctx: BenchContext,
    results: list[Result],
    direct: dict[tuple[int, int], Result],
    direct_rate: Result,
    gw_rate: Result,
    memory: dict[str, tuple[int, int, int]],
) -> None:
    note = ctx.notes.append
    d99, g99 = direct_rate.percentile(99) * 1000, gw_rate.percentile(99) * 1000
    added = g99 - d99
    note(
        f"{_verdict(added <= TARGET_ADDED_P99_MS)}  added p99 at {OPEN_LOOP_RATE:g} req/s (QRC): "
        f"direct {d99:.2f} ms, gateway {g99:.2f} ms, difference {added:+.2f} ms "
        f"(target <= {TARGET_ADDED_P99_MS:g} ms)"
    )

    def row(target: str, clients: int, window: int) -> Result:
        scenario = _scenario(clients, window)
        return next(r for r in results if r.target == target and r.scenario == scenario)

    for transport, shape, limit in (
        ("qrc", (1, ctx.window), TARGET_STREAM_CPU_US),
        ("ws", (1, ctx.window), TARGET_STREAM_CPU_US),
        ("http", (50, 1), TARGET_HTTP_CPU_US),
    ):
        r = row(f"gateway/{transport}", *shape)
        cpu = (r.cpu_per_request or 0.0) * 1e6
        line = f"{_verdict(cpu <= limit)}  CPU per call, {transport} {r.scenario}: {cpu:.0f} us"
        if ctx.baseline is not None:
            b = row(f"baseline/{transport}", *shape).cpu_per_request or 0.0
            line += f" (baseline {b * 1e6:.0f} us, {cpu / (b * 1e6) - 1:+.0%})" if b else ""
        note(f"{line}; target <= {limit:g} us; {1e6 / cpu:,.0f} calls/s per fully used core")
    wide = row("gateway/qrc", 50, WIDE_WINDOW)
    ratio = wide.rps / direct[50, WIDE_WINDOW].rps
    note(
        f"{_verdict(ratio >= TARGET_QRC_RATIO)}  QRC throughput at 50 clients: {wide.rps:,.0f} "
        f"req/s, {ratio:.2f}x the simulator direct measured beside it "
        f"({direct[50, WIDE_WINDOW].rps:,.0f} req/s; target >= {TARGET_QRC_RATIO:g}x; the load "
        "generator shares the CPUs)"
    )
    for line in cpu_split_notes(wide, direct[50, WIDE_WINDOW]):
        note(line)
    for transport in ("qrc", "http"):
        r = row(f"gateway/{transport}", 1, 1)
        p50 = (r.percentile(50) - direct[1, 1].percentile(50)) * 1000
        note(
            f"{_verdict(p50 <= TARGET_ADDED_P50_MS)}  added p50 at 1 client x 1, {transport}: "
            f"{p50:+.3f} ms (target <= {TARGET_ADDED_P50_MS:g} ms)"
        )
    http = max((r for r in results if r.target == "gateway/http"), key=lambda r: r.rps)
    note(
        f"{_verdict(http.rps >= TARGET_HTTP_RPS)}  HTTP throughput: {http.rps:,.0f} req/s "
        f"({http.scenario}; target >= {TARGET_HTTP_RPS:,.0f})"
    )
    for transport, (before, after, refused) in memory.items():
        held = ctx.idle_clients - refused
        per_client = (after - before) / max(1, held)
        limit = TARGET_IDLE_KIB[transport]
        note(
            f"{_verdict(per_client <= limit and not refused)}  idle logged-on {transport} "
            f"clients: gateway RSS {before:,} KiB -> {after:,} KiB with {held:,} more = "
            f"{per_client:.1f} KiB per client (target <= {limit:g} KiB); "
            f"{refused:,} of {ctx.idle_clients:,} refused or closed"
        )


def cpu_split_notes(gateway: Result, direct: Result) -> list[str]:
    """Who used the CPUs in the raw QRC 50-client rows, and the throughput ratio the CPU per
    call of each process allows: a process runs on one core at most (one event loop), so
    with a core of its own the gateway serves 1 / (its CPU per call) and the simulator
    direct 1 / (its CPU per call), whatever else the machine runs."""
    g, d = gateway.cpu_split, direct.cpu_split
    if g is None or d is None or not g.calls or not d.calls:
        return []

    def split(s: CpuSplit) -> str:
        shares = [
            f"{name} {s.cores(name):.2f} ({s.per_call(name) * 1e6:.1f} us)" for name in s.used
        ]
        return ", ".join([*shares, f"rest of the machine {s.others():.2f}"])

    cpus = os.cpu_count() or 1
    gw_call = g.per_call("gateway")
    direct_call = max(d.per_call(name) for name in d.used)  # the busiest process bounds it
    gw_cap, direct_cap = 1 / gw_call, 1 / direct_call
    together = sum(g.per_call(name) for name in g.used)
    return [
        f"INFO  QRC at 50 clients, CPUs busy by process (CPU us per call), of {cpus}: direct: "
        f"{split(d)}; through the gateway: {split(g)}",
        f"INFO  the gateway process kept {g.cores('gateway'):.0%} of one core busy; with a core "
        f"of its own it serves {gw_cap:,.0f} req/s against {direct_cap:,.0f} direct (the "
        f"busiest process with a core of its own): at most {gw_cap / direct_cap:.2f}x; 0.5x "
        f"needs <= {2 * direct_call * 1e6:.1f} us per call in one gateway process; the three "
        f"processes together need {together * 1e6:.1f} us per call: {cpus / together:,.0f} "
        f"req/s on {cpus} CPUs with any number of gateway processes",
    ]
