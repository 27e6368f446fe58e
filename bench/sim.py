"""Baseline: `Control.Get` straight to a `qsys-core-sim` subprocess over QRC."""

from __future__ import annotations

from .common import BenchContext, QrcLoad, Result, simulator

TARGET = "simulator (direct QRC)"


async def run(ctx: BenchContext) -> list[Result]:
    results = []
    with simulator() as sim:
        for clients in (1, 50):
            load = QrcLoad("Control.Get", ["MainGain"], ctx.max_requests)
            plural = "s" if clients > 1 else ""
            scenario = f"Control.Get, {clients} client{plural} x {ctx.window} in flight"
            results.append(await load.run(sim.port, clients, ctx, TARGET, scenario))
    return results
