"""Audit trail: one JSON line per audited call (`"type": "audit"`).

Refusals made before a call runs (authentication, throttling, rate limit, batch size)
go through `refused`: the first of a kind is written at once; identical ones within
`REPEAT_WINDOW` seconds are counted and written as one line with `count` and their
`callIds` when the window closes, so a flood costs a few lines, never a silent drop."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from .metrics import GatewayMetrics

REPEAT_WINDOW = 1.0
MAX_REPEAT_KEYS = 4096
MAX_CALL_IDS = 16


@dataclass(slots=True)
class _Repeats:
    fields: dict[str, Any]
    count: int = 0
    call_ids: list[Any] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)


class _Clock:
    """`ts` of audit lines, ISO 8601 UTC to the millisecond (`2026-01-02T03:04:05.678+00:00`),
    formatted once a second; the milliseconds are added per line."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        t = time.time()
        second = int(t)
        if second != self._second:
            moment = dt.datetime.fromtimestamp(second, dt.UTC)
            self._prefix = moment.strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._prefix}.{int((t - second) * 1000):03d}+00:00"


class AuditLog:
    def __init__(self, path: str, metrics: GatewayMetrics) -> None:
        self.path = path
        self._metrics = metrics
        self._repeats: dict[tuple[Any, ...], _Repeats] = {}
        self._stream: IO[bytes] = (
            sys.stdout.buffer if path == "-" else open(path, "ab", buffering=0)  # noqa: SIM115
        )
        self._flush = self.path == "-"
        self._clock = _Clock()

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
        call_id: Any = None,
        count: int | None = None,
        call_ids: list[Any] | None = None,
        request_ids: list[str] | None = None,
        token: str | None = None,
        trace_id: str | None = None,
    ) -> None:
        """`token`: which of the subject's tokens the call used, "current" or "previous"
        (during a rotation grace period); never the token itself."""
        line: dict[str, Any] = {
            "type": "audit",
            "ts": self._clock.now(),
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
            "callId": call_id,
        }
        if count is not None:
            line["count"] = count
            line["callIds"] = call_ids or []
            line["requestIds"] = request_ids or [request_id]
        if token is not None:
            line["token"] = token
        if trace_id is not None:
            line["traceId"] = trace_id
        # Written at once, line by line: the trail is complete up to the last call
        # answered, even if the process is killed the next moment.
        self._stream.write(orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE))
        if self._flush:
            self._stream.flush()
        self._metrics.audit_events.labels(decision).inc()

    def refused(
        self,
        *,
        request_id: str,
        subject: str,
        source_ip: str,
        transport: str,
        method: str,
        targets: tuple[str, ...] = (),
        values: tuple[Any, ...] = (),
        reason: str,
        outcome: str,
        call_id: Any = None,
        trace_id: str | None = None,
        itemised: bool = True,
    ) -> bool:
        """A refusal before the call ran; identical ones in a window become one line.
        True when this one was written now (the first of its kind in the window).
        `trace_id` goes on that line only (it is not part of what makes refusals alike).
        Not `itemised` (refused authentications, whose flood is anonymous): the counted
        line carries no call or request ids, so its size does not grow with the flood."""
        fields: dict[str, Any] = {
            "subject": subject,
            "source_ip": source_ip,
            "transport": transport,
            "method": method,
            "targets": targets,
            "values": values,
            "reason": reason,
            "outcome": outcome,
        }
        try:
            key: tuple[Any, ...] | None = tuple(
                (k, v if not isinstance(v, tuple) else orjson.dumps(v, default=str))
                for k, v in fields.items()
            )
        except TypeError:
            key = None
        repeats = self._repeats.get(key) if key is not None else None
        if repeats is not None:
            if repeats.count == 0:
                repeats.fields["request_id"] = request_id
            repeats.count += 1
            if not itemised:
                return False
            if len(repeats.call_ids) < MAX_CALL_IDS:
                repeats.call_ids.append(call_id)
            if request_id not in repeats.request_ids and len(repeats.request_ids) < MAX_CALL_IDS:
                repeats.request_ids.append(request_id)
            return False
        self.record(
            request_id=request_id,
            decision="deny",
            duration_ms=0.0,
            call_id=call_id,
            trace_id=trace_id,
            **fields,
        )
        if key is None or len(self._repeats) >= MAX_REPEAT_KEYS:
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return True
        self._repeats[key] = _Repeats({"request_id": request_id, **fields})
        loop.call_later(REPEAT_WINDOW, self._flush_repeats, key)
        return True

    def _flush_repeats(self, key: tuple[Any, ...]) -> None:
        repeats = self._repeats.pop(key, None)
        if repeats is None or repeats.count == 0:
            return
        self.record(
            decision="deny",
            duration_ms=0.0,
            count=repeats.count,
            call_ids=repeats.call_ids,
            request_ids=repeats.request_ids,
            **repeats.fields,
        )

    def flush(self) -> None:
        """Write every pending count (shutdown)."""
        for key in list(self._repeats):
            self._flush_repeats(key)

    def close(self) -> None:
        self.flush()
        if self.path != "-":
            self._stream.close()
