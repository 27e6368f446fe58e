"""JSON logs: one object per line with ts, level, logger, message."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

DROPPED = ("settings", "k8s_skip")
"""Extras Kopf attaches for its own Event posting; not JSON-serialisable, not for logs."""


class _DropKopfExtras(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name in DROPPED:
            record.__dict__.pop(name, None)
        return True


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    )
    handler.addFilter(_DropKopfExtras())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kubernetes.client.rest", "urllib3", "aiohttp.access", "kopf.objects"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
