"""`make bench`: run every benchmark and print one table, baseline first."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import platform
import sys
from pathlib import Path

from .common import BenchContext, Result, format_table

# Modules under bench/ with `async def run(ctx) -> list[Result]`, in table order.
BENCHMARKS = ["sim", "gateway", "auth", "fanout", "mcp", "operator_scale", "operator_fairness"]


async def _main(ctx: BenchContext, names: list[str]) -> list[Result]:
    results: list[Result] = []
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results += await module.run(ctx)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument(
        "names", nargs="*", default=BENCHMARKS, help=f"benchmarks ({', '.join(BENCHMARKS)})"
    )
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per scenario")
    p.add_argument("--window", type=int, default=16, help="requests in flight per client")
    p.add_argument(
        "--baseline",
        type=Path,
        help="a source tree (e.g. `git worktree add /tmp/base main`) whose gateway is "
        "measured beside this one, scenario by scenario, in the same run",
    )
    p.add_argument(
        "--baseline-python",
        type=Path,
        help="the interpreter the --baseline gateway runs under (an environment with the "
        "gateway's dependencies installed); with --baseline . it compares Python versions",
    )
    p.add_argument(
        "--idle-clients",
        type=int,
        default=10_000,
        help="idle logged-on clients per transport in the gateway's memory check",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run each gateway scenario this often (alternating with the baseline's) and "
        "keep the run with the median CPU per call",
    )
    p.add_argument("--cores", type=int, default=None, help="operator_scale: QSysCores (200)")
    p.add_argument(
        "--policies", type=int, default=None, help="operator_scale: AccessPolicies (2 per core)"
    )
    args = p.parse_args(argv)
    if args.baseline is not None and not (args.baseline / "gateway" / "qsys_gateway").is_dir():
        p.error(f"--baseline {args.baseline}: no gateway/qsys_gateway there")
    if args.baseline_python is not None and args.baseline is None:
        p.error("--baseline-python needs --baseline")
    ctx = BenchContext(
        duration=args.duration,
        window=args.window,
        baseline=args.baseline.resolve() if args.baseline is not None else None,
        baseline_python=args.baseline_python,
        idle_clients=args.idle_clients,
        rounds=max(1, args.rounds),
        cores=args.cores,
        policies=args.policies,
    )
    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    results = asyncio.run(_main(ctx, args.names))
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {loop_name}; "
        f"{ctx.duration:g} s per scenario after {ctx.warmup:g} s warm-up\n"
    )
    print(format_table(results))
    if ctx.notes:
        print()
        print("\n".join(ctx.notes))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
