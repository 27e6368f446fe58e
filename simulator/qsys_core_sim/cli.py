"""`qsys-core-sim`: run the Core simulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from pydantic import ValidationError

from .design import load_design
from .server import CoreSimulator


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qsys-core-sim", description="Q-SYS Core simulator (QRC)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1710, help="QRC port (default 1710)")
    p.add_argument("--design", help="design YAML (default: the built-in demo design)")
    p.add_argument("--username", help="require Logon with this user")
    p.add_argument("--password", help="require Logon with this password")
    p.add_argument(
        "--idle-timeout", type=float, default=60.0, help="close sockets silent this long (s)"
    )
    p.add_argument("--max-change-groups", type=int, default=512)
    p.add_argument("--standby", action="store_true", help="start as the standby unit of a pair")
    p.add_argument("--log-level", default="INFO")
    return p


async def _run(args: argparse.Namespace) -> None:
    design = load_design(args.design)
    sim = CoreSimulator(
        design,
        host=args.host,
        port=args.port,
        username=args.username,
        password=args.password,
        idle_timeout=args.idle_timeout,
        max_change_groups=args.max_change_groups,
    )
    if args.standby:
        sim.engine.state = "Standby"
    await sim.start()
    print(f"qsys-core-sim listening on {args.host}:{sim.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    try:
        load_design(args.design)
    except (OSError, ValueError, ValidationError) as exc:
        print(f"qsys-core-sim: bad design: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
