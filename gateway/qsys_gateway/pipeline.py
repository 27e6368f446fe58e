"""One policy pipeline for every transport: validate, authorise, audit, forward, count.

Transports authenticate and rate-limit a whole request, then hand each
JSON-RPC message to `Pipeline.call`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel

from .config import SubjectConfig
from .metrics import method_label
from .policy import Decision, Policy
from .qrc import jsonrpc
from .qrc.errors import ErrorCode, QrcError
from .qrc.methods import (
    METHODS,
    ChangeGroupAddComponentControlParams,
    ChangeGroupAddControlParams,
    parse_params,
)
from .runtime import Runtime
from .upstream import UpstreamSession

log = logging.getLogger("qsys_gateway.pipeline")

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


@dataclass(slots=True)
class Caller:
    """An authenticated client connection (or an HTTP request)."""

    subject: SubjectConfig
    transport: str
    source_ip: str
    session: UpstreamSession


def _is_write(method: str) -> bool:
    spec = METHODS.get(method)
    return spec is None or spec.kind == "write"


_ADD_METHODS = frozenset({"ChangeGroup.AddControl", "ChangeGroup.AddComponentControl"})


def _require_read(policy: Policy, subject: str, params: Any, decision: Decision) -> Decision:
    """A change group delivers values, so adding a control also needs read permission."""
    if isinstance(params, ChangeGroupAddComponentControlParams):
        component = params.Component.Name
        names = [c.Name for c in params.Component.Controls]
    elif isinstance(params, ChangeGroupAddControlParams):
        component, names = "", list(params.Controls)
    else:
        return decision
    for name in names:
        if not policy.can_read(subject, component, name):
            target = f"{component}.{name}" if component else name
            return replace(decision, allowed=False, reason=f"no rule allows reading {target}")
    return decision


def _method_of(obj: Any) -> str:
    method = obj.get("method") if isinstance(obj, dict) else None
    return method if isinstance(method, str) else "invalid"


class Pipeline:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        # Labelled children, looked up once: label values are bounded (see metrics.py).
        self._counters: dict[tuple[str, str, str, str], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    async def call(self, caller: Caller, obj: Any, request_id: str) -> dict[str, Any] | None:
        """Handle one decoded JSON-RPC message; returns the response (None for notifications)."""
        started = time.perf_counter()
        rt = self.rt
        try:
            msg = jsonrpc.parse_object(obj)
        except jsonrpc.InvalidMessage as exc:
            self._count("other", caller, "invalid", started)
            return jsonrpc.error_message(exc.request_id, exc)
        if isinstance(msg, jsonrpc.Response):
            return None
        method = msg.method
        label = method_label(method)
        subject = rt.current_subject(caller.subject.name)
        if (
            subject is None
            or subject.tokenSha256 != caller.subject.tokenSha256
            or subject.sourceCIDRs != caller.subject.sourceCIDRs
        ):
            err = QrcError(
                ErrorCode.UNAUTHENTICATED, "Unauthenticated: credentials revoked or changed"
            )
            self._count(label, caller, "unauthenticated", started)
            return None if msg.is_notification else jsonrpc.error_message(msg.id, err)
        caller.subject = subject
        params: Any
        try:
            if method == "Logon":
                raise QrcError(ErrorCode.INVALID_REQUEST, "Invalid request: already logged on")
            params = parse_params(method, msg.params) if method in METHODS else msg.params
        except QrcError as exc:
            self._count(label, caller, "invalid", started)
            return None if msg.is_notification else jsonrpc.error_message(msg.id, exc)
        rules = rt.rules
        decision = rules.policy.authorize(subject.name, method, params)
        if decision.allowed and method in _ADD_METHODS:
            decision = _require_read(rules.policy, subject.name, params, decision)
        write = _is_write(method)
        if not decision.allowed:
            err = QrcError(ErrorCode.FORBIDDEN, f"Forbidden by policy: {decision.reason}")
            self._audit(
                caller,
                request_id,
                method,
                decision.targets,
                decision.values,
                "deny",
                decision.reason,
                "denied",
                started,
            )
            self._count(label, caller, "denied", started)
            return None if msg.is_notification else jsonrpc.error_message(msg.id, err)
        forward = (
            params.model_dump(mode="json", exclude_none=True)
            if isinstance(params, BaseModel)
            else params
        )
        rt.call_started()
        try:
            result = await caller.session.call(method, forward)
        except QrcError as exc:
            outcome = outcome_of(exc.code)
            response = jsonrpc.error_message(msg.id, exc)
        else:
            outcome = "ok"
            response = jsonrpc.result_message(msg.id, result)
        finally:
            rt.call_finished()
        if write or rules.config.audit.logReads:
            self._audit(
                caller,
                request_id,
                method,
                decision.targets,
                decision.values,
                "allow",
                decision.reason,
                outcome,
                started,
            )
        self._count(label, caller, outcome, started)
        return None if msg.is_notification else response

    def reject(
        self,
        caller_subject: str,
        transport: str,
        source_ip: str,
        obj: Any,
        error: QrcError,
        request_id: str,
        reason: str,
    ) -> None:
        """Audit and count one call refused before the pipeline (rate limit, auth)."""
        method = _method_of(obj)
        outcome = outcome_of(error.code)
        self.rt.audit.record(
            request_id=request_id,
            subject=caller_subject,
            source_ip=source_ip,
            transport=transport,
            method=method[:128],
            decision="deny",
            reason=reason,
            outcome=outcome,
            duration_ms=0.0,
        )
        self.rt.metrics.requests.labels(
            method_label(method), caller_subject, transport, outcome
        ).inc()

    def _audit(
        self,
        caller: Caller,
        request_id: str,
        method: str,
        targets: tuple[str, ...],
        values: tuple[Any, ...],
        decision: str,
        reason: str,
        outcome: str,
        started: float,
    ) -> None:
        self.rt.audit.record(
            request_id=request_id,
            subject=caller.subject.name,
            source_ip=caller.source_ip,
            transport=caller.transport,
            method=method[:128],
            targets=targets,
            values=values,
            decision=decision,
            reason=reason,
            outcome=outcome,
            duration_ms=(time.perf_counter() - started) * 1000,
        )

    def _count(self, label: str, caller: Caller, outcome: str, started: float) -> None:
        key = (label, caller.subject.name, caller.transport, outcome)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.rt.metrics.requests.labels(*key)
        counter.inc()
        tkey = (label, caller.transport)
        timer = self._timers.get(tkey)
        if timer is None:
            timer = self._timers[tkey] = self.rt.metrics.request_duration.labels(*tkey)
        timer.observe(time.perf_counter() - started)
