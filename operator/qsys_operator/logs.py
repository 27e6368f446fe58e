"""JSON logs: the gateway's format (ts, level, logger, message), minus Kopf's internal extras."""

from __future__ import annotations

import logging

from qsys_gateway.logs import setup_logging as _setup_json_logging

DROPPED = ("settings", "k8s_skip")
"""Extras Kopf attaches for its own Event posting; not JSON-serialisable, not for logs."""
QUIET = ("kubernetes.client.rest", "urllib3", "aiohttp.access", "kopf.objects")


class _DropKopfExtras(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name in DROPPED:
            record.__dict__.pop(name, None)
        return True


def setup_logging(level: str = "INFO") -> None:
    _setup_json_logging(level, filters=[_DropKopfExtras()], quiet=QUIET)
