"""Admission's records: the audit line and the counters of a call, whatever refused or
answered it, and the types every part of admission shares (`Caller`, `Refusal`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qsys_protocol.config import SubjectConfig
from qsys_protocol.qrc.errors import ErrorCode, QrcError

from . import tracing
from .metrics import method_label
from .policy import Decision, describe
from .runtime import Runtime
from .upstream import UpstreamSession

log = logging.getLogger("qsys_gateway.admission")

_OUTCOME_BY_CODE: dict[int, str] = {
    ErrorCode.CORE_UNAVAILABLE: "unavailable",
    ErrorCode.CORE_TIMEOUT: "timeout",
    ErrorCode.FORBIDDEN: "denied",
    ErrorCode.RATE_LIMITED: "rate_limited",
    ErrorCode.UNAUTHENTICATED: "unauthenticated",
    ErrorCode.PARSE_ERROR: "invalid",
    ErrorCode.INVALID_REQUEST: "invalid",
    ErrorCode.INVALID_PARAMS: "invalid",
    ErrorCode.METHOD_NOT_FOUND: "invalid",
}


def outcome_of(code: int) -> str:
    return _OUTCOME_BY_CODE.get(code, "error")


class Refusal(QrcError):
    """The one refusal type: a call refused (authentication, throttling, rate limit,
    policy) or failed (the Core's error), as the client is told, with when to retry.
    `kind` marks a refusal whose message is already written for the client (MCP tool
    arguments); None for the gateway's and the Core's errors. `decision`: the policy's,
    when the policy refused it (the client is told its reason only)."""

    def __init__(
        self,
        code: int,
        message: str,
        retry_after: float = 0.0,
        kind: str | None = None,
        decision: Decision | None = None,
    ) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after
        self.kind = kind
        self.decision = decision

    @classmethod
    def of(cls, err: QrcError) -> Refusal:
        if isinstance(err, Refusal):
            return err
        refusal = cls(err.code, err.message)
        refusal.data = err.data
        return refusal


@dataclass(slots=True)
class Caller:
    """One client connection (or one HTTP request) as admission sees it."""

    transport: str
    source_ip: str
    subject: SubjectConfig | None = None
    session: UpstreamSession | None = None
    owns_session: bool = False
    token_hash: str = ""
    """The configured hash the caller's token matched (current or, in a grace, previous)."""
    expires: float | None = None
    """A ServiceAccount token's `exp` (Unix seconds); None for other credentials."""

    @property
    def subject_name(self) -> str:
        return self.subject.name if self.subject is not None else "-"


@dataclass(frozen=True, slots=True)
class Work:
    """A request made in process (an MCP tool call): charged to the rate limit and
    audited, when refused, as a call of `method` with `params`; holds `weight` of the
    in-flight gate while `run` runs, whose Core calls are `Admission.call`s."""

    method: str
    params: Any
    weight: int
    run: Callable[[], Awaitable[Any]]

    def message(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params}


def _method_of(obj: Any) -> str:
    method = obj.get("method") if isinstance(obj, dict) else None
    return method if isinstance(method, str) else "invalid"


class Records:
    """The audit line and counters of calls (refused or answered)."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def _token(self, caller: Caller) -> str | None:
        """Which of its subject's tokens the caller used, for the audit line."""
        return None

    def _auth_failed(
        self, caller: Caller, method: str, err: QrcError, request_id: str, reason: str
    ) -> None:
        self.rt.metrics.auth_failures.labels(caller.transport).inc()
        anonymous = Caller(caller.transport, caller.source_ip)
        if self.refuse(anonymous, {"method": method}, err, request_id, reason, itemised=False):
            # logged with its audit line: repeats in a burst are counted there, not logged
            log.warning(
                "authentication failed",
                extra={
                    "request_id": request_id,
                    "source_ip": caller.source_ip,
                    "transport": caller.transport,
                    "reason": reason,
                },
            )

    def refuse(
        self,
        caller: Caller,
        obj: Any,
        error: QrcError,
        request_id: str,
        reason: str,
        *,
        itemised: bool = True,
    ) -> bool:
        """Audit and count one call refused before `handle` (authentication, rate limit):
        with its call id, targets and values; identical refusals in a burst are written
        once with a count (`AuditLog.refused`; `itemised`: with their call and request
        ids). True when a line was written now."""
        if isinstance(obj, Work):
            obj = obj.message()
        method = _method_of(obj)
        subject = caller.subject_name
        outcome = outcome_of(error.code)
        call_id = obj.get("id") if isinstance(obj, dict) else None
        targets: tuple[str, ...] = ()
        values: tuple[Any, ...] = ()
        if method != "Logon" and isinstance(obj, dict):
            targets, values = describe(method, obj.get("params"))
        written = self.rt.audit.refused(
            request_id=request_id,
            subject=subject,
            source_ip=caller.source_ip,
            transport=caller.transport,
            method=method[:128],
            targets=targets,
            values=values,
            reason=reason,
            outcome=outcome,
            call_id=call_id if isinstance(call_id, int | str) else None,
            trace_id=tracing.trace_id(),
            itemised=itemised,
        )
        self.rt.metrics.requests.labels(
            method_label(method), subject, caller.transport, outcome
        ).inc()
        return written

    def check_batch(self, caller: Caller, calls: Sequence[Any], request_id: str) -> Refusal | None:
        """One batch limit for every transport (`limits.maxBatchCalls`): a bigger batch is
        refused whole, with one audit line counting its calls."""
        limit = self.rt.config.limits.maxBatchCalls
        if len(calls) <= limit:
            return None
        err = Refusal(ErrorCode.INVALID_REQUEST, f"Invalid request: batch over {limit} calls")
        self.rt.audit.record(
            request_id=request_id,
            subject=caller.subject_name,
            source_ip=caller.source_ip,
            transport=caller.transport,
            method="batch",
            decision="deny",
            reason=f"batch over {limit} calls",
            outcome="invalid",
            duration_ms=0.0,
            count=len(calls),
            trace_id=tracing.trace_id(),
        )
        self.rt.metrics.requests.labels(
            "other", caller.subject_name, caller.transport, "invalid"
        ).inc()
        return err

    def _audit(
        self,
        caller: Caller,
        request_id: str,
        method: str,
        decision: Decision,
        outcome: str,
        started: float,
        call_id: Any = None,
    ) -> None:
        self.rt.audit.record(
            request_id=request_id,
            subject=caller.subject_name,
            source_ip=caller.source_ip,
            transport=caller.transport,
            method=method[:128],
            targets=decision.targets,
            values=decision.values,
            call_id=call_id,
            decision="allow" if decision.allowed else "deny",
            reason=decision.reason,
            outcome=outcome,
            duration_ms=(time.perf_counter() - started) * 1000,
            token=self._token(caller),
            trace_id=tracing.trace_id(),
        )

    def _count(self, label: str, caller: Caller, outcome: str, started: float) -> None:
        subject = caller.subject_name
        if tracing.ENABLED:
            span = {"rpc.method": label, "qsys.subject": subject, "qsys.outcome": outcome}
            tracing.annotate(span)
        metrics = self.rt.metrics
        metrics.requests.labels(label, subject, caller.transport, outcome).inc()
        metrics.request_duration.labels(label, caller.transport).observe(
            time.perf_counter() - started
        )
