"""JSON logging: one object per line with ts, level, logger, message, request_id, subject."""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Sequence

from pythonjsonlogger.json import JsonFormatter

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
subject_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("subject", default=None)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id_var.get()
        if rid is not None and not hasattr(record, "request_id"):
            record.request_id = rid
        subject = subject_var.get()
        if subject is not None and not hasattr(record, "subject"):
            record.subject = subject
        return True


def setup_logging(
    level: str = "INFO",
    *,
    filters: Sequence[logging.Filter] = (),
    quiet: Sequence[str] = ("aiohttp.access",),
) -> None:
    """JSON lines on stderr for the whole process; `quiet` loggers only say warnings."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    )
    handler.addFilter(_ContextFilter())
    for extra in filters:
        handler.addFilter(extra)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
