"""Admission: the one path every client call takes, whatever transport carried it.

Contract for transport authors (HTTP, WebSocket, raw QRC, QRWC, MCP, ...):

1. Make one `Caller(transport, source_ip)` per connection (per request for HTTP and MCP).
2. `await admission.authenticate(caller, token, user=..., request_id=...)` once (per
   request for HTTP and MCP): returns the subject or raises `Refusal`, already audited
   and counted; answer `Refusal.code` / `.retry_after` in the transport's own way. Raw
   QRC alone may instead call `admission.authenticate_source(caller, request_id=...)`
   for a client that never sends Logon (source-bound subjects, docs/policy.md); a
   connection that logs on with its first calls does so in the `logon` step of `serve`.
3. A transport with a connection that can take pushes calls
   `admission.open_session(caller, push)` after logon and `await admission.release(caller)`
   when the client goes; change groups then live as long as the connection. Without it,
   calls share the subject's idle-closed session (`SubjectSessions`).
4. Per received request (one call or a batch), one `await admission.serve(caller, calls,
   request_id, ...)`: the batch limit, the transport's `logon` step (if any), the rate
   limit (one token a call), then each call under the in-flight gate, handled. Calls are
   decoded JSON-RPC objects (their replies are JSON-RPC replies, None for notifications)
   or `Work`, a request made in process (MCP tools: their result, or the `Refusal`
   raised). Without a `lane` the calls run in order and `serve` returns the replies, or
   the `Refusal` of the whole request (each call already audited); a connection passes
   its `Lane`, where calls run concurrently and every reply and refusal is sent.
5. Per call (`handle` for JSON-RPC, `call` for a typed call inside `Work`): the current
   credential, params, policy, the caller's upstream session, records (audit, counters).
   `look_up` is the design read the gateway makes for a caller (MCP): policy first.

What each method is (write, retryable, change-group add, answered before logon) is
`qsys_protocol.qrc.methods.traits_of`; nothing here decides that on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from qsys_protocol.config import SubjectConfig
from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import ErrorCode, QrcError
from qsys_protocol.qrc.methods import METHODS, logon_credentials, parse_params, traits_of

from . import tracing
from .identity import SWEEP_SECONDS, Identity, Proof, throttle_key
from .inflight import Lane, call_weight
from .metrics import method_label
from .policy import Decision, needs_control_types
from .ratelimit import RateDecision
from .records import Caller, Refusal, Work, outcome_of
from .runtime import Rules, Runtime
from .subject_sessions import SubjectSessions
from .upstream.session import PendingCall, UpstreamSession

log = logging.getLogger("qsys_gateway.connected")

__all__ = [
    "SWEEP_SECONDS",
    "Admission",
    "Caller",
    "Lane",
    "Proof",
    "Refusal",
    "Work",
    "outcome_of",
    "throttle_key",
]


def _denial(method: str, decision: Decision) -> Refusal:
    """-32003 for a modelled method; for one the gateway does not model -32601, what a
    Core answers for a method it does not know, naming the rule that would forward it."""
    if method in METHODS:
        reason = f"Forbidden by policy: {decision.reason}"
        return Refusal(ErrorCode.FORBIDDEN, reason, decision=decision)
    name = method[:64]
    return Refusal(
        ErrorCode.METHOD_NOT_FOUND,
        f"Method not found: {name} is not modelled by the gateway, which forwards it only "
        f'when a rule of the subject names it exactly (methods: ["{name}"]; a glob such as '
        '"*" never does)',
    )


class Admission(Identity):
    """The per-call path, on top of identity (who) and records (audit, counters)."""

    def __init__(self, runtime: Runtime, *, shared_idle_seconds: float = 300.0) -> None:
        super().__init__(runtime)
        self.shared = SubjectSessions(
            runtime.upstream,
            shared_idle_seconds,
            can_read=lambda *target: runtime.rules.policy.can_read(*target),
        )

    def start(self) -> None:
        self.shared.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.shared.close()

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
        decision = self._hit_now(caller, calls)
        if decision is None:
            assert caller.subject is not None
            rate = self.rt.config.rate_for(caller.subject)
            decision = await self.rt.limiter.hit(caller.subject.name, rate, max(1, len(calls)))
        return self._rate_verdict(caller, calls, decision, request_id)

    def _hit_now(self, caller: Caller, calls: Sequence[Any]) -> RateDecision | None:
        """The limiter's decision when it answers without waiting (memory buckets); None
        when it must be awaited (nothing charged then)."""
        assert caller.subject is not None, "authenticate first"
        rate = self.rt.config.rate_for(caller.subject)
        return self.rt.limiter.hit_local(caller.subject.name, rate, max(1, len(calls)))

    def _rate_verdict(
        self, caller: Caller, calls: Sequence[Any], decision: RateDecision, request_id: str
    ) -> Refusal | None:
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
        self,
        caller: Caller,
        calls: Sequence[Any],
        request_id: str,
        *,
        lane: Lane | None = None,
        logon: Callable[[list[Any]], Awaitable[list[Any]]] | None = None,
    ) -> list[Any] | Refusal:
        """One received request, in order: the batch limit, `logon` (a connection's
        calls that log it on: it returns the calls left for the logged-on path), the
        rate limit (one token a call), then each call under the gateway's in-flight
        weight gate (and the connection's, in its `lane`), handled.

        Without a lane: the replies in order (None for notifications), or the
        `Refusal` of the whole request (each call already audited). With one: the calls
        run concurrently in the lane and everything is answered there ([] returned)."""
        refused = self.check_batch(caller, calls, request_id)
        if refused is not None:
            if lane is None:
                return refused
            lane.send(jsonrpc.error_message(None, refused))
            return []
        if logon is not None:
            calls = await logon(calls if isinstance(calls, list) else list(calls))
            if not calls:
                return []
        decision = self._hit_now(caller, calls)
        refused = (
            self._rate_verdict(caller, calls, decision, request_id)
            if decision is not None
            else await self.rate_limit(caller, calls, request_id)
        )
        if refused is not None:
            if lane is None:
                return refused
            for obj in calls:
                lane.answer(obj, refused)
            return []
        if lane is not None:
            rest = self._start(lane, caller, calls, request_id)
            if rest is not None:
                await rest
            return []
        gate = self.rt.in_flight_gate
        handle = self._handle if not tracing.ENABLED else self.handle
        replies: list[Any] = []
        for obj in calls:
            if isinstance(obj, Work):
                weight = gate.take(obj.weight) or await gate.acquire(obj.weight)
                try:
                    replies.append(await self._work(caller, obj, request_id))
                finally:
                    gate.release(weight)
                continue
            wanted = call_weight(obj)
            weight = gate.take(wanted) or await gate.acquire(wanted)
            try:
                replies.append(await handle(caller, obj, request_id))
            finally:
                gate.release(weight)
        return replies

    def serve_now(
        self, caller: Caller, calls: Sequence[Any], request_id: str, lane: Lane
    ) -> Coroutine[Any, Any, Any] | None:
        """`serve` for a logged-on connection with no logon step, as far as it goes
        without waiting (the same steps in the same order): None when every call is
        answered or running in the lane; else the rest, to await before the connection's
        next request (the rate limit needs Redis, or the lane or the gateway is full)."""
        refused = self.check_batch(caller, calls, request_id)
        if refused is not None:
            lane.send(jsonrpc.error_message(None, refused))
            return None
        decision = self._hit_now(caller, calls)
        if decision is None:  # nothing taken yet; the batch check passes again
            return self.serve(caller, calls, request_id, lane=lane)
        refused = self._rate_verdict(caller, calls, decision, request_id)
        if refused is not None:
            for obj in calls:
                lane.answer(obj, refused)
            return None
        return self._start(lane, caller, calls, request_id)

    def _start(
        self, lane: Lane, caller: Caller, calls: Sequence[Any], request_id: str
    ) -> Coroutine[Any, Any, None] | None:
        """Start each call in the lane, in order, while it has room; the rest (from the
        first that must wait) as a coroutine to await."""
        direct = not tracing.ENABLED
        handle = self._handle if direct else self.handle
        for i, obj in enumerate(calls):
            if direct and self._start_direct(lane, caller, obj, request_id):
                continue
            if not lane.try_start(obj, partial(handle, caller, obj, request_id), request_id):
                return self._start_waiting(lane, caller, calls[i:], request_id)
        return None

    def _start_direct(self, lane: Lane, caller: Caller, obj: Any, request_id: str) -> bool:
        """A read, run without a task: the steps of `_handle` and `_run` in the same
        order, the Core's answer finishing it in `DirectCall.ended`. True when the call
        is answered or on its way (in a task when no connection can take it now); False
        when nothing was done or taken (not a read, the lane is full, or a call before
        it in the lane has not gone out yet: calls reach the Core in the order they
        came): it then runs in a task from the start. (Only writes need control types
        to be judged.)"""
        if lane.behind_a_task:
            return False
        method = obj.get("method") if isinstance(obj, dict) else None
        if not isinstance(method, str) or method == "Logon":
            return False
        traits = traits_of(method)
        if traits.write or traits.change_group:
            return False
        held = lane.take(obj)
        if held is None:
            return False
        started = time.perf_counter()
        try:
            msg = jsonrpc.parse_object(obj)
        except jsonrpc.InvalidMessage as exc:
            self._count("other", caller, "invalid", started)
            lane.done(held, jsonrpc.error_message(exc.request_id, exc))
            return True
        assert isinstance(msg, jsonrpc.Request)
        try:
            admitted = self._judge(caller, method, msg.params, msg.id, request_id, started)
            if not admitted.decision.allowed:
                raise self._deny(admitted)
        except QrcError as exc:
            lane.done(held, _reply(msg, None, exc))
            return True
        call = DirectCall(self, lane, msg, admitted)
        rt = self.rt
        rt.call_started()
        pending = self._session(admitted).send(method, admitted.params, call.ended)
        if pending is None:  # no connection can take it now: it waits in a task
            rt.call_finished()
            lane.run(obj, call.queued, held, request_id)
            return True
        call.upstream = pending
        lane.track(call, obj, held)
        return True

    async def _start_waiting(
        self, lane: Lane, caller: Caller, calls: Sequence[Any], request_id: str
    ) -> None:
        handle = self._handle if not tracing.ENABLED else self.handle
        for obj in calls:
            work = partial(handle, caller, obj, request_id)
            if not lane.try_start(obj, work, request_id):
                await lane.start(obj, work, request_id)

    async def _work(self, caller: Caller, work: Work, request_id: str) -> Any:
        if not tracing.ENABLED:
            return await work.run()
        with tracing.call_span(caller.transport, request_id):
            return await work.run()

    async def call(self, caller: Caller, method: str, params: Any, request_id: str) -> Any:
        """One typed call made in process, inside `Work` that `serve` admitted (whose
        weight holds the in-flight gate): the same path as `handle` without a JSON-RPC
        message; returns the result or raises the `QrcError` the client would get."""
        return await self._run(caller, method, params, None, request_id, time.perf_counter())

    async def look_up(
        self, caller: Caller, method: str, params: dict[str, Any], request_id: str
    ) -> Any:
        """A design read the gateway makes for a caller (`Component.GetComponents`,
        `Component.GetControls`), whose answer it caches for every subject and filters
        by policy before a caller sees any of it: policy first (the subject's rules
        must name the component, so a forbidden and a missing one look alike), then
        the pool (not the caller's session), the audit (as a read) and the counters.
        Charged to nothing: the caller's own request that needed it was."""
        started = time.perf_counter()
        label = method_label(method)
        subject = self._current(caller)
        if subject is None:
            self._count(label, caller, "unauthenticated", started)
            raise Refusal(ErrorCode.UNAUTHENTICATED, "Unauthenticated: credentials revoked")
        rt = self.rt
        component = params.get("Name")
        targets = (component,) if isinstance(component, str) else ()
        if isinstance(component, str) and not rt.rules.policy.names_component(
            subject.name, component
        ):
            denied = Decision(False, "design look-up", targets, (), False)
            self._audit(caller, request_id, method, denied, "denied", started)
            self._count(label, caller, "denied", started)
            raise Refusal(ErrorCode.FORBIDDEN, f"Forbidden by policy: no rule allows {component}")
        decision = Decision(True, "design look-up", targets, (), False)
        rt.call_started()
        try:
            result = await rt.upstream.forward(method, params)
        except QrcError as exc:
            outcome = outcome_of(exc.code)
            self._audit(caller, request_id, method, decision, outcome, started)
            self._count(label, caller, outcome, started)
            raise Refusal.of(exc) from None
        finally:
            rt.call_finished()
        if rt.config.audit.logReads:
            self._audit(caller, request_id, method, decision, "ok", started)
        self._count(label, caller, "ok", started)
        return result

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
            return _reply(msg, None, exc)
        return _reply(msg, result, None)

    def _current(self, caller: Caller) -> SubjectConfig | None:
        """The caller's subject under the current config, set on `caller`; None once its
        credential no longer admits it."""
        known = caller.subject
        subject = self.rt.current_subject(known.name) if known is not None else None
        if (
            subject is None
            or known is None
            or self.credential(caller, subject) is None
            or subject.sourceCIDRs != known.sourceCIDRs
        ):
            return None
        caller.subject = subject
        return subject

    def _run(
        self,
        caller: Caller,
        method: str,
        raw_params: Any,
        call_id: Any,
        request_id: str,
        started: float,
    ) -> Coroutine[Any, Any, Any]:
        """The per-call path, in order: who (current credential), params, policy, the
        upstream session, records. Raises `QrcError` (already counted and audited) at
        once when refused before the Core; the coroutine returned makes the call (and
        raises the error the Core's answer becomes)."""
        admitted = self._judge(caller, method, raw_params, call_id, request_id, started)
        typed = None if admitted.decision.allowed else needs_control_types(method, admitted.params)
        if typed is not None:
            return self._run_typed(admitted, typed)
        return self._allowed(admitted)

    async def _run_typed(self, admitted: Admitted, component: str) -> Any:
        """Denied without the types of `component`'s controls: unknown types are judged
        strictest, and a Boolean control may relax the verdict."""
        types = await self.rt.upstream.control_types.get(component)
        if types:
            admitted.decision = admitted.rules.policy.authorize(
                admitted.subject.name, admitted.method, admitted.params, types
            )
        return await self._allowed(admitted)

    def _allowed(self, admitted: Admitted) -> Coroutine[Any, Any, Any]:
        """`_call` when the policy allows it; else the refusal raised (recorded)."""
        decision = admitted.decision
        if tracing.ENABLED:
            tracing.annotate({"qsys.decision": "allow" if decision.allowed else "deny"})
        if not decision.allowed:
            raise self._deny(admitted)
        return self._call(admitted)

    async def _call(self, admitted: Admitted) -> Any:
        """An allowed call, through the caller's upstream session, recorded."""
        rt = self.rt
        session = self._session(admitted)
        rt.call_started()
        error: QrcError | None = None
        result: Any = None
        try:
            call = session.call(admitted.method, admitted.params)
            if tracing.ENABLED:
                call = tracing.upstream_call(admitted.label, call)
            result = await call
        except QrcError as exc:
            error = exc
        finally:
            rt.call_finished()
        return self._settle(admitted, result, error)

    def _judge(
        self,
        caller: Caller,
        method: str,
        raw_params: Any,
        call_id: Any,
        request_id: str,
        started: float,
    ) -> Admitted:
        """Who (the current credential), params, policy. Raises `QrcError` (counted)."""
        label = method_label(method)
        rules = self.rt.rules
        subject = self._current(caller)
        if subject is None:
            self._count(label, caller, "unauthenticated", started)
            raise QrcError(ErrorCode.UNAUTHENTICATED, "Unauthenticated: credentials revoked")
        try:
            params = parse_params(method, raw_params) if method in METHODS else raw_params
        except QrcError:
            self._count(label, caller, "invalid", started)
            raise
        decision = rules.policy.authorize(subject.name, method, params)
        return Admitted(
            caller, method, params, call_id, request_id, started, label, rules, subject, decision
        )

    def _deny(self, admitted: Admitted) -> Refusal:
        a = admitted
        self._audit(a.caller, a.request_id, a.method, a.decision, "denied", a.started, a.call_id)
        self._count(a.label, a.caller, "denied", a.started)
        return _denial(a.method, a.decision)

    def _session(self, admitted: Admitted) -> UpstreamSession:
        caller = admitted.caller
        session = caller.session
        if session is None:
            session = caller.session = self.shared.get(admitted.subject.name)
        return session

    def _settle(self, admitted: Admitted, result: Any, error: QrcError | None) -> Any:
        """A call's answer from the Core, recorded (audit, counters): its result, or
        `error` raised."""
        a = admitted
        if error is None:
            outcome = "ok"
            if a.method == "Component.GetComponents":
                result = a.rules.policy.visible_components(a.subject.name, result)
        else:
            outcome = outcome_of(error.code)
        if traits_of(a.method).write or a.rules.config.audit.logReads:
            self._audit(a.caller, a.request_id, a.method, a.decision, outcome, a.started, a.call_id)
        self._count(a.label, a.caller, outcome, a.started)
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
        """A connection keeps its one subject for life: `true` when the
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


def _reply(msg: jsonrpc.Request, result: Any, error: QrcError | None) -> dict[str, Any] | None:
    """The JSON-RPC reply to `msg` (None for a notification)."""
    if msg.is_notification:
        return None
    if error is not None:
        return jsonrpc.error_message(msg.id, error)
    return jsonrpc.result_message(msg.id, result)


@dataclass(slots=True)
class Admitted:
    """A call as admission judged it (who, params, policy), and what its answer is
    recorded with."""

    caller: Caller
    method: str
    params: Any
    call_id: Any
    request_id: str
    started: float
    label: str
    rules: Rules
    subject: SubjectConfig
    decision: Decision


class DirectCall:
    """A read run without a task (`Admission._start_direct`), from its admission to its
    reply: `ended` is called as the Core's answer is read, records it as `_call` does,
    and answers in the lane; `cancel` when the connection closes under it."""

    __slots__ = ("_admission", "_lane", "_msg", "_over", "admitted", "upstream")

    def __init__(
        self, admission: Admission, lane: Lane, msg: jsonrpc.Request, admitted: Admitted
    ) -> None:
        self._admission = admission
        self._lane = lane
        self._msg = msg
        self._over = False
        self.admitted = admitted
        self.upstream: PendingCall | None = None

    def ended(self, result: Any, error: BaseException | None) -> None:
        if self._over:  # cancelled: the lane has answered it
            return
        self._over = True
        self.upstream = None  # it holds this call's `ended`: no cycle left for the collector
        admission, msg = self._admission, self._msg
        admission.rt.call_finished()
        reply: dict[str, Any] | None
        try:
            if error is not None and not isinstance(error, QrcError):
                raise error  # not an answer the Core or the gateway gives: logged below
            reply = _reply(msg, admission._settle(self.admitted, result, error), None)
        except QrcError as exc:
            reply = _reply(msg, None, exc)
        except Exception:
            log.exception("call failed", extra={"request_id": self.admitted.request_id})
            reply = _reply(msg, None, QrcError(ErrorCode.SERVER_ERROR, "Internal error"))
        try:
            self._lane.finish(self, reply)
        except Exception:
            log.exception("call failed", extra={"request_id": self.admitted.request_id})

    async def queued(self) -> dict[str, Any] | None:
        """The read could not go at once: it goes as a call in a task does, from the
        upstream session on (its admission is not done again)."""
        try:
            result = await self._admission._call(self.admitted)
        except QrcError as exc:
            return _reply(self._msg, None, exc)
        return _reply(self._msg, result, None)

    def cancel(self) -> None:
        """The connection is closing: the call is dropped upstream, unrecorded (as a
        cancelled task's); the lane answers it."""
        if self._over:
            return
        self._over = True
        if self.upstream is not None:
            self.upstream.cancel()
            self.upstream = None
        self._admission.rt.call_finished()
