"""Admission: the one path every client call takes, whatever transport carried it.

Contract for transport authors (HTTP, WebSocket, raw QRC, QRWC, MCP, ...):

1. Make one `Caller(transport, source_ip)` per connection (per request for HTTP).
2. `await admission.authenticate(caller, token, user=..., request_id=...)` once (per
   request for HTTP): returns the subject or raises `Refusal`, already audited and counted;
   answer `Refusal.code` / `.retry_after` in the transport's own way. Raw QRC alone may
   instead call `admission.authenticate_source(caller, request_id=...)` for a client that
   never sends Logon (source-bound subjects, docs/policy.md); QRWC authenticates each new
   `apiKey` on a fresh `Caller` and keeps the connection's subject (transports/connected.py).
3. A transport with a connection that can take pushes calls
   `admission.open_session(caller, push)` after logon and `await admission.release(caller)`
   when the client goes; change groups then live as long as the connection. Without it,
   calls share the subject's idle-closed session (`SubjectSessions`).
4. Per received request (one call or a batch): `check_batch`, then `await
   admission.rate_limit(caller, calls, request_id)`; a returned `Refusal` refuses the
   whole batch (each call already audited).
5. Per call, under the in-flight gate: `await admission.handle(caller, obj, request_id)`
   with the decoded JSON-RPC object; it returns the JSON-RPC reply (None for
   notifications and responses). It re-checks the subject against the current config,
   validates params, asks the policy, forwards through the caller's upstream session,
   audits and counts. In-process callers (MCP) use the typed `call(caller, method,
   params, request_id)` instead, which returns the result or raises.

A connectionless transport does 4 and 5 in one `serve(caller, calls, request_id)`.

What each method is (write, retryable, change-group add, answered before logon) is
`qsys_protocol.qrc.methods.traits_of`; nothing here decides that on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qsys_protocol.config import SubjectConfig
from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import ErrorCode, QrcError
from qsys_protocol.qrc.methods import METHODS, logon_credentials, parse_params, traits_of

from . import tracing
from .auth import MAX_USER_CHARS
from .inflight import call_weight
from .metrics import method_label
from .policy import Decision, describe, needs_control_types
from .runtime import Runtime
from .subject_sessions import SubjectSessions
from .tokenreview import Answer, ReviewBusy, ReviewUnavailable
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


SWEEP_SECONDS = 1.0
"""How often connections are checked for a token past its rotation grace period."""


def _denial(method: str, decision: Decision) -> QrcError:
    """-32003 for a modelled method; for one the gateway does not model -32601, what a
    Core answers for a method it does not know, naming the rule that would forward it."""
    if method in METHODS:
        return QrcError(ErrorCode.FORBIDDEN, f"Forbidden by policy: {decision.reason}")
    name = method[:64]
    return QrcError(
        ErrorCode.METHOD_NOT_FOUND,
        f"Method not found: {name} is not modelled by the gateway, which forwards it only "
        f'when a rule of the subject names it exactly (methods: ["{name}"]; a glob such as '
        '"*" never does)',
    )


class Refusal(QrcError):
    """The one refusal type: a call refused (authentication, throttling, rate limit,
    policy) or failed (the Core's error), as the client is told, with when to retry.
    `kind` marks a refusal whose message is already written for the client (MCP tool
    arguments); None for the gateway's and the Core's errors."""

    def __init__(
        self, code: int, message: str, retry_after: float = 0.0, kind: str | None = None
    ) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after
        self.kind = kind

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


def throttle_key(source_ip: str, user: str | None) -> str:
    """Failed logons are counted per source and presented subject name (bearer: none)."""
    if not user:
        return source_ip
    return f"{source_ip}\x00{user[:MAX_USER_CHARS]}"


def _method_of(obj: Any) -> str:
    method = obj.get("method") if isinstance(obj, dict) else None
    return method if isinstance(method, str) else "invalid"


class Admission:
    def __init__(self, runtime: Runtime, *, shared_idle_seconds: float = 300.0) -> None:
        self.rt = runtime
        self.shared = SubjectSessions(
            runtime.upstream,
            shared_idle_seconds,
            can_read=lambda *target: runtime.rules.policy.can_read(*target),
        )
        # Labelled children, looked up once: label values are bounded (see metrics.py).
        self._counters: dict[tuple[str, str, str, str], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}
        self._watched: dict[int, tuple[Caller, Callable[[], Awaitable[None]]]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.shared.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.shared.close()

    # ---- who ----------------------------------------------------------------------

    async def authenticate(
        self,
        caller: Caller,
        token: str | None,
        *,
        user: str | None = None,
        request_id: str,
        method: str = "Logon",
    ) -> SubjectConfig:
        """A bearer token (or a Logon `user` + token) → the subject, set on `caller`.

        A token no token subject matches is reviewed with the Kubernetes TokenReview API
        when ServiceAccount subjects exist (`tokenreview`). Failures are throttled per
        source and presented subject (`throttle_key`); a valid token is always admitted
        (a ServiceAccount token while throttled only from the review cache), so one
        guessing client behind a NAT or an ingress never locks out the correct tokens of
        the room. A refusal is audited as a call of `method`, a fixed word of the
        transport's (never the client's text), merged per source and reason within the
        audit window, and raised as `Refusal`."""
        rt = self.rt
        found = None
        if token:
            found = rt.rules.authenticator.match(token, user, logon=user is not None)
        key = throttle_key(caller.source_ip, user)
        if found is not None:
            rt.throttle.success(key)
            caller.subject, caller.token_hash = found.subject, found.token_hash
            return found.subject
        wait = rt.throttle.retry_after(key)
        reason = "invalid or missing token"
        if token and rt.token_review is not None:
            # Reviews are also throttled per source alone, so varying the Logon `User`
            # does not buy more of them.
            source = caller.source_ip
            throttled = wait > 0 or (key != source and rt.throttle.retry_after(source) > 0)
            try:
                answer = await self._review(token, source, throttled=throttled)
            except ReviewBusy:
                err = Refusal(ErrorCode.RATE_LIMITED, "Too many token reviews; retry later", 1.0)
                self._auth_failed(caller, method, err, request_id, "token reviews busy")
                raise err from None
            except ReviewUnavailable:
                self._review_failed(key, source, wait)
                err = Refusal(
                    ErrorCode.UNAUTHENTICATED, "Unauthenticated: the token could not be reviewed"
                )
                self._auth_failed(caller, method, err, request_id, "token review unavailable")
                raise err from None
            if answer is None:  # throttled, not in the cache: refused as throttled
                wait = max(wait, rt.throttle.retry_after(source))
            else:
                subject = self._service_account(answer, user)
                if subject is not None:
                    rt.throttle.success(key)
                    caller.subject, caller.token_hash = subject, ""
                    caller.expires = answer.expires
                    return subject
                reason = answer.reason
                if answer.username is not None:
                    reason = f"ServiceAccount {answer.username[:128]} is no subject's"
                if key != source and wait <= 0:
                    rt.throttle.failure(source)
        if wait > 0:
            err = Refusal(
                ErrorCode.RATE_LIMITED, "Too many failed authentications; retry later", wait
            )
            self._auth_failed(caller, method, err, request_id, "auth throttled")
            raise err
        rt.throttle.failure(key)
        err = Refusal(ErrorCode.UNAUTHENTICATED, "Unauthenticated")
        self._auth_failed(caller, method, err, request_id, reason)
        raise err

    def _review_failed(self, key: str, source: str, wait: float) -> None:
        """No answer counts as a failed logon too: an outage must not let a client have
        unbounded reviews attempted."""
        if wait > 0:
            return
        self.rt.throttle.failure(key)
        if key != source:
            self.rt.throttle.failure(source)

    async def _review(self, token: str, source_ip: str, *, throttled: bool) -> Answer | None:
        """The TokenReview answer for `token` (None: not reviewed now, being throttled)."""
        reviewer = self.rt.token_review
        assert reviewer is not None
        if not throttled:
            return await reviewer.review(token, source_ip)
        answer = reviewer.cached(token)
        if answer is None:
            self.rt.metrics.tokenreview_skipped.labels("throttled").inc()
        return answer

    def _service_account(self, answer: Answer, user: str | None) -> SubjectConfig | None:
        """The subject whose serviceAccount the review named; a Logon's `User` may be empty
        or name the subject (or its account)."""
        if answer.username is None:
            return None
        subject = self.rt.rules.config.by_service_account(answer.username)
        if subject is None or user not in (None, "", subject.name, answer.username):
            return None
        return subject

    def authenticate_source(self, caller: Caller, *, request_id: str) -> SubjectConfig | None:
        """Raw QRC clients that cannot Logon: the source-bound subject whose sourceCIDRs
        hold the caller's address, set on `caller` and audited with the source; else None.

        Only the raw QRC transport may call this (docs/policy.md)."""
        subject = self.rt.rules.authenticator.by_source(caller.source_ip)
        if subject is None:
            return None
        caller.subject = subject
        self.rt.audit.record(
            request_id=request_id,
            subject=subject.name,
            source_ip=caller.source_ip,
            transport=caller.transport,
            method="Logon",
            decision="allow",
            reason="source address in the subject's sourceCIDRs",
            outcome="ok",
            duration_ms=0.0,
        )
        return subject

    def credential(self, caller: Caller) -> str | None:
        """ "current", "previous" or "serviceAccount": the token the caller logged on with,
        as the current config judges it now; None once it no longer admits it (rotated
        past the grace period, a ServiceAccount token past its `exp`, the subject removed
        or bound to another account)."""
        known = caller.subject
        subject = self.rt.current_subject(known.name) if known is not None else None
        if subject is None or known is None:
            return None
        if caller.expires is not None:
            account = subject.serviceAccount
            if account is None or account != known.serviceAccount:
                return None
            return "serviceAccount" if time.time() < caller.expires else None
        if subject.serviceAccount is not None:
            return None
        return subject.credential(caller.token_hash, time.time())

    def watch(self, caller: Caller, close: Callable[[], Awaitable[None]]) -> None:
        """Close this connection once its token is no longer admitted (end of a grace period)."""
        self._watched[id(caller)] = (caller, close)

    def unwatch(self, caller: Caller) -> None:
        self._watched.pop(id(caller), None)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            for key, (caller, close) in list(self._watched.items()):
                if caller.subject is not None and self.credential(caller) is None:
                    del self._watched[key]
                    await close()

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

    def open_session(self, caller: Caller, push: Callable[[dict[str, Any]], None]) -> None:
        """Give a logged-on connection its own upstream session (pushes go to `push`)."""
        assert caller.subject is not None, "authenticate first"
        rt, name = self.rt, caller.subject.name
        caller.session = rt.upstream.open_session(
            push,
            lambda component, control: rt.rules.policy.can_read(name, component, control),
            owner=name,
        )
        caller.owns_session = True

    async def release(self, caller: Caller) -> None:
        """The client went away: drop its own session's change groups."""
        session, caller.session = caller.session, None
        if session is not None and caller.owns_session:
            await session.close()
        self._watched.pop(id(caller), None)
        caller.subject = None

    # ---- how much -----------------------------------------------------------------

    async def rate_limit(
        self, caller: Caller, calls: Sequence[Any], request_id: str
    ) -> Refusal | None:
        """Charge one token per call; on refusal audit each call and return the error."""
        assert caller.subject is not None, "authenticate first"
        rt = self.rt
        rate = rt.config.rate_for(caller.subject)
        decision = await rt.limiter.hit(caller.subject.name, rate, max(1, len(calls)))
        if decision.allowed:
            return None
        err = Refusal(ErrorCode.RATE_LIMITED, "Rate limited", decision.retry_after)
        for obj in calls or [{}]:
            self.refuse(caller, obj, err, request_id, "rate limit exceeded")
        return err

    # ---- what ---------------------------------------------------------------------

    async def handle(self, caller: Caller, obj: Any, request_id: str) -> dict[str, Any] | None:
        """One decoded JSON-RPC message → its reply (None for notifications)."""
        if not tracing.ENABLED:
            return await self._handle(caller, obj, request_id)
        with tracing.call_span(caller.transport, request_id):
            return await self._handle(caller, obj, request_id)

    async def serve(
        self, caller: Caller, calls: Sequence[Any], request_id: str
    ) -> list[dict[str, Any] | None] | Refusal:
        """One received request of a connectionless transport (HTTP), in order: the
        batch limit, the rate limit (one token a call), then each call under the
        gateway's in-flight weight gate. A `Refusal` refuses the whole request (each
        call already audited); else the replies, None for notifications."""
        refused = self.check_batch(caller, calls, request_id) or await self.rate_limit(
            caller, calls, request_id
        )
        if refused is not None:
            return refused
        gate = self.rt.in_flight_gate
        replies: list[dict[str, Any] | None] = []
        for obj in calls:
            weight = await gate.acquire(call_weight(obj))
            try:
                replies.append(await self.handle(caller, obj, request_id))
            finally:
                gate.release(weight)
        return replies

    async def call(self, caller: Caller, method: str, params: Any, request_id: str) -> Any:
        """One call made in process (MCP): the same path as `handle`, under the in-flight
        gate, without a JSON-RPC message; returns the result or raises the `QrcError` the
        client would get."""
        gate = self.rt.in_flight_gate
        weight = await gate.acquire(call_weight({"params": params}))
        try:
            if not tracing.ENABLED:
                return await self._run(
                    caller, method, params, None, request_id, time.perf_counter()
                )
            with tracing.call_span(caller.transport, request_id):
                return await self._run(
                    caller, method, params, None, request_id, time.perf_counter()
                )
        finally:
            gate.release(weight)

    async def _handle(self, caller: Caller, obj: Any, request_id: str) -> dict[str, Any] | None:
        started = time.perf_counter()
        try:
            msg = jsonrpc.parse_object(obj)
        except jsonrpc.InvalidMessage as exc:
            self._count("other", caller, "invalid", started)
            return jsonrpc.error_message(exc.request_id, exc)
        if isinstance(msg, jsonrpc.Response):
            return None
        if msg.method == "Logon" and self._current(caller) is not None:
            assert caller.subject is not None
            return await self._logon_again(
                caller, caller.subject, msg, request_id, method_label("Logon"), started
            )
        try:
            result = await self._run(caller, msg.method, msg.params, msg.id, request_id, started)
        except QrcError as exc:
            return None if msg.is_notification else jsonrpc.error_message(msg.id, exc)
        return None if msg.is_notification else jsonrpc.result_message(msg.id, result)

    def _current(self, caller: Caller) -> SubjectConfig | None:
        """The caller's subject under the current config, set on `caller`; None once its
        credential no longer admits it."""
        known = caller.subject
        subject = self.rt.current_subject(known.name) if known is not None else None
        if (
            subject is None
            or known is None
            or self.credential(caller) is None
            or subject.sourceCIDRs != known.sourceCIDRs
        ):
            return None
        caller.subject = subject
        return subject

    async def _run(
        self,
        caller: Caller,
        method: str,
        raw_params: Any,
        call_id: Any,
        request_id: str,
        started: float,
    ) -> Any:
        """The per-call path, in order: who (current credential), params, policy, the
        upstream session, records. Raises `QrcError` (already counted and audited)."""
        rt = self.rt
        label = method_label(method)
        subject = self._current(caller)
        if subject is None:
            self._count(label, caller, "unauthenticated", started)
            raise QrcError(ErrorCode.UNAUTHENTICATED, "Unauthenticated: credentials revoked")
        params: Any
        try:
            params = parse_params(method, raw_params) if method in METHODS else raw_params
        except QrcError:
            self._count(label, caller, "invalid", started)
            raise
        rules = rt.rules
        decision = rules.policy.authorize(subject.name, method, params)
        typed = None if decision.allowed else needs_control_types(method, params)
        if typed is not None:
            # Unknown types are judged strictest; a Boolean control may relax the verdict.
            types = await rt.upstream.control_types.get(typed)
            if types:
                decision = rules.policy.authorize(subject.name, method, params, types)
        tracing.annotate({"qsys.decision": "allow" if decision.allowed else "deny"})
        if not decision.allowed:
            err = _denial(method, decision)
            self._audit(caller, request_id, method, decision, "denied", started, call_id)
            self._count(label, caller, "denied", started)
            raise Refusal.of(err)
        session = caller.session
        if session is None:
            session = caller.session = self.shared.get(subject.name)
        rt.call_started()
        error: QrcError | None = None
        result: Any = None
        try:
            with tracing.upstream_span(label):
                result = await session.call(method, params)
        except QrcError as exc:
            outcome = outcome_of(exc.code)
            error = exc
        else:
            outcome = "ok"
            if method == "Component.GetComponents":
                result = rules.policy.visible_components(subject.name, result)
        finally:
            rt.call_finished()
        if traits_of(method).write or rules.config.audit.logReads:
            self._audit(caller, request_id, method, decision, outcome, started, call_id)
        self._count(label, caller, outcome, started)
        if error is not None:
            raise error
        return result

    async def _logon_again(
        self,
        caller: Caller,
        subject: SubjectConfig,
        msg: jsonrpc.Request,
        request_id: str,
        label: str,
        started: float,
    ) -> dict[str, Any] | None:
        """A connection keeps its one subject for life (issue 11 #1): `true` when the
        Logon names that subject with its token, refused otherwise; either way nothing
        changes (no new session, no throttle count) and nothing tells whether other
        credentials would have been valid."""
        try:
            user, token = logon_credentials(msg.params)
        except QrcError as invalid:
            self._count(label, caller, "invalid", started)
            return None if msg.is_notification else jsonrpc.error_message(msg.id, invalid)
        found = None
        if token:
            found = self.rt.rules.authenticator.logon(user, token)
            if found is None and subject.serviceAccount is not None:
                found = await self._same_account(token, user, caller.source_ip)
        if found is not None and found.name == subject.name:
            self._count(label, caller, "ok", started)
            return None if msg.is_notification else jsonrpc.result_message(msg.id, True)
        reason = "already logged on as another subject"
        self.rt.audit.refused(
            request_id=request_id,
            subject=subject.name,
            source_ip=caller.source_ip,
            transport=caller.transport,
            method="Logon",
            reason=reason,
            outcome="invalid",
            call_id=msg.id,
        )
        self._count(label, caller, "invalid", started)
        err = QrcError(ErrorCode.INVALID_REQUEST, f"Invalid request: {reason}")
        return None if msg.is_notification else jsonrpc.error_message(msg.id, err)

    async def _same_account(self, token: str, user: str, source_ip: str) -> SubjectConfig | None:
        """A repeated Logon with a ServiceAccount token: its subject (cached review, or a
        review under the same bounds as a first logon); None when not admitted."""
        if self.rt.token_review is None:
            return None
        try:
            answer = await self._review(token, source_ip, throttled=False)
        except (ReviewBusy, ReviewUnavailable):
            return None
        return self._service_account(answer, user) if answer is not None else None

    # ---- records ------------------------------------------------------------------

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
        refused whole, with one audit line counting its calls (issue 11 #5)."""
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
            token=(
                self.credential(caller) if caller.token_hash or caller.expires is not None else None
            ),
            trace_id=tracing.trace_id(),
        )

    def _count(self, label: str, caller: Caller, outcome: str, started: float) -> None:
        key = (label, caller.subject_name, caller.transport, outcome)
        if tracing.ENABLED:
            tracing.annotate({"rpc.method": label, "qsys.subject": key[1], "qsys.outcome": outcome})
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.rt.metrics.requests.labels(*key)
        counter.inc()
        tkey = (label, caller.transport)
        timer = self._timers.get(tkey)
        if timer is None:
            timer = self._timers[tkey] = self.rt.metrics.request_duration.labels(*tkey)
        timer.observe(time.perf_counter() - started)
