"""Audit trail: one JSON line per audited call (`"type": "audit"`)."""

from __future__ import annotations

import datetime as dt
import sys
from typing import IO, Any

import orjson

from .metrics import GatewayMetrics


class AuditLog:
    def __init__(self, path: str, metrics: GatewayMetrics) -> None:
        self.path = path
        self._metrics = metrics
        self._stream: IO[bytes] = (
            sys.stdout.buffer if path == "-" else open(path, "ab", buffering=0)  # noqa: SIM115
        )

    def record(
        self,
        *,
        request_id: str,
        subject: str,
        source_ip: str,
        transport: str,
        method: str,
        targets: tuple[str, ...] | list[str] = (),
        values: tuple[Any, ...] | list[Any] = (),
        decision: str,
        reason: str,
        outcome: str,
        duration_ms: float,
        trace_id: str | None = None,
    ) -> None:
        line = {
            "type": "audit",
            "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "requestId": request_id,
            "subject": subject,
            "sourceIp": source_ip,
            "transport": transport,
            "method": method,
            "targets": list(targets),
            "values": list(values),
            "decision": decision,
            "reason": reason,
            "outcome": outcome,
            "durationMs": round(duration_ms, 3),
        }
        if trace_id is not None:
            line["traceId"] = trace_id
        self._stream.write(orjson.dumps(line, default=str) + b"\n")
        if self.path == "-":
            self._stream.flush()
        self._metrics.audit_events.labels(decision).inc()

    def close(self) -> None:
        if self.path != "-":
            self._stream.close()
