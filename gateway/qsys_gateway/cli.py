"""`qsys-gateway --config PATH`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys

from qsys_protocol.config import ConfigError, load_config

from . import tracing
from .logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qsys-gateway", description="Hardened QRC gateway")
    parser.add_argument("--config", required=True, help="path to gateway.yaml")
    parser.add_argument("--log-level", default=os.environ.get("QSYS_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    setup_logging(args.log_level, filters=[tracing.TraceLogFilter()])
    tracing.setup()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"qsys-gateway: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    from .app import run

    asyncio.run(run(config, args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
