"""Change-group fan-out: N QRC clients each watch 20 controls (5 change per
second) on AutoPoll through one gateway process; Core-side polls and groups, gateway CPU
and memory, and the delay from a change on the Core to each client's push."""

from __future__ import annotations

import asyncio
import itertools
import os
import resource
import time
from typing import Any

from qsys_core_sim.server import CoreSimulator
from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.client import QrcClient
from qsys_protocol.qrc.errors import QrcError
from qsys_testkit import LOOPBACK, GatewayProcess

from .common import (
    BenchContext,
    Result,
    cpu_seconds,
    gateway,
    rss_kib,
)

TOKEN = "fanout-token-3b7e1d9c5a2f4e6b8d0c"
MIXERS = ["Room101 Mixer", "Room102 Mixer", "Auditorium Mixer"]
CHANGES_PER_SECOND = 5
AUTOPOLL_RATE = 0.1
CLIENT_COUNTS = (10, 100, 1000)
TARGET_P99_MS = 100.0 + AUTOPOLL_RATE * 1000


def _gateway(core_port: int) -> GatewayProcess:
    """A gateway process, started once healthy (connected to the Core: a raw QRC client
    of a gateway without its Core is closed). `async with` waits in a thread: the
    simulator runs on this process's event loop, which a blocking wait would starve."""
    methods = ["NoOp", "ChangeGroup.*", "Component.Get"]
    gw = gateway(core_port, token=TOKEN, methods=methods, max_clients=1500, ready="healthz")
    # Every client comes from 127.0.0.1 and logs on in batches of 100; real panels have
    # addresses of their own (the default per-source bound is 64).
    gw.config["limits"]["maxUnauthenticatedClientsPerSource"] = 200
    gw.write_config(gw.config)
    return gw


def _controls(sim: CoreSimulator, mixer: str) -> list[str]:
    return list(sim.engine.components[mixer])[:20]


class _Client:
    def __init__(self, set_at: dict[tuple[str, str, Any], float], delays: list[float]) -> None:
        self.set_at = set_at
        self.delays = delays
        self.measuring = False
        self.client: QrcClient | None = None

    def on_push(self, msg: jsonrpc.Request) -> None:
        if not self.measuring or msg.method != "ChangeGroup.Poll":
            return
        now = time.perf_counter()
        params = msg.params if isinstance(msg.params, dict) else {}
        for change in params.get("Changes", []):
            t = self.set_at.get((change.get("Component"), change.get("Name"), change.get("Value")))
            if t is not None:
                self.delays.append(now - t)

    async def start(self, port: int, mixer: str, controls: list[str]) -> None:
        for attempt in itertools.count():
            try:
                self.client = await QrcClient.connect(
                    LOOPBACK, port, timeout=10, on_notification=self.on_push
                )
                break
            except OSError:
                if attempt > 100:
                    raise
                await asyncio.sleep(0.1)
        assert self.client is not None
        await self.client.call("Logon", {"User": "bench", "Password": TOKEN}, timeout=30)
        params = {
            "Id": "g",
            "Component": {"Name": mixer, "Controls": [{"Name": c} for c in controls]},
        }
        for attempt in itertools.count():  # until the gateway's upstream is connected
            try:
                await self.client.call("ChangeGroup.AddComponentControl", params, timeout=30)
                break
            except QrcError:
                if attempt > 100:
                    raise
                await asyncio.sleep(0.1)
        await self.client.call(
            "ChangeGroup.AutoPoll", {"Id": "g", "Rate": AUTOPOLL_RATE}, timeout=30
        )


async def _scenario(ctx: BenchContext, n: int) -> tuple[Result, str]:
    sim = CoreSimulator(idle_timeout=None)
    await sim.start()
    set_at: dict[tuple[str, str, Any], float] = {}
    delays: list[float] = []
    clients = [_Client(set_at, delays) for _ in range(n)]
    try:
        async with _gateway(sim.port) as gw:
            pid, port = gw.pid, gw.qrc_port
            for i in range(0, n, 100):
                await asyncio.gather(
                    *(
                        c.start(port, MIXERS[j % 3], _controls(sim, MIXERS[j % 3]))
                        for j, c in enumerate(clients[i : i + 100], start=i)
                    )
                )
            await asyncio.sleep(ctx.warmup)
            for c in clients:
                c.measuring = True
            seq = itertools.count(1)
            polls0, cpu0, t0 = sim.engine.polls, cpu_seconds(pid), time.perf_counter()
            changes = 0
            while time.perf_counter() - t0 < ctx.duration:
                for mixer in MIXERS:
                    names = [c for c in _controls(sim, mixer) if c.endswith("gain")]
                    for _ in range(CHANGES_PER_SECOND):
                        k = next(seq)
                        name = names[k % len(names)]
                        value = -round((k % 990 + 1) / 10, 1)
                        sim.set_control(name, value, mixer)
                        set_at[(mixer, name, value)] = time.perf_counter()
                        changes += 1
                        await asyncio.sleep(1 / (CHANGES_PER_SECOND * len(MIXERS)))
            await asyncio.sleep(AUTOPOLL_RATE * 3)
            seconds = time.perf_counter() - t0
            core_polls = (sim.engine.polls - polls0) / seconds
            cpu = (cpu_seconds(pid) - cpu0) / seconds
            groups = sim.engine.change_group_count
            rss = rss_kib(pid)
            for c in clients:
                c.measuring = False
            await asyncio.gather(
                *(c.client.close() for c in clients if c.client is not None),
                return_exceptions=True,
            )
    finally:
        await sim.close()
    expected = changes * n // len(MIXERS)
    result = Result(
        "gateway/fanout",
        f"{n} clients x 20 controls, AutoPoll {AUTOPOLL_RATE:g} s (change -> push)",
        len(delays),
        max(0, expected - len(delays)),
        seconds,
        latencies=delays,
    )
    note = (
        f"fanout {n:>4} clients: Core polls/s {core_polls:5.1f}, Core groups {groups}, "
        f"gateway CPU {cpu * 100:5.1f}%, RSS {rss / 1024:6.1f} MiB, delivered {len(delays)}"
        f"/{expected}, delay p50 {result.percentile(50) * 1000:6.1f} ms "
        f"p99 {result.percentile(99) * 1000:6.1f} ms (target p99 < {TARGET_P99_MS:g} ms)"
    )
    return result, note


async def run(ctx: BenchContext) -> list[Result]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results: list[Result] = []
    for n in CLIENT_COUNTS:
        result, note = await _scenario(ctx, n)
        results.append(result)
        ctx.notes.append(note)
    ctx.notes.append(f"fanout on {os.cpu_count()} CPUs; clients and simulator share one process")
    return results
