"""The one seam between MCP and the gateway's admission layer (`..admission`).

MCP follows the transport contract of `qsys_gateway.admission` like every other
transport: one `Caller` per HTTP request, `authenticate` once per request, each tool
call (and resource read or subscription) one `Work` through `Admission.serve` (`invoke`:
batch and rate limit, in-flight gate), the typed `call` per QRC call inside it (policy,
audit, metrics, upstream), `design` for the design look-ups made on a caller's behalf
(`Admission.look_up`), `open_session` / `release` for a subscriber that takes pushes.
Every Core access of MCP goes through here; only the translation between MCP and QRC
lives in the rest of this package. Refusals are `Refusal`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from qsys_protocol.config import SubjectConfig
from qsys_protocol.qrc.errors import ErrorCode, QrcError

from ..admission import Caller, Refusal, Work, outcome_of
from ..metrics import method_label
from ..policy import Policy
from ..runtime import Runtime
from ..transports.common import Services

TRANSPORT = "mcp"
__all__ = ["TRANSPORT", "Caller", "McpAdmission", "McpCaller", "Refusal", "outcome_of"]


@dataclass(slots=True)
class McpCaller:
    """One authenticated MCP HTTP request: the admission `Caller` and its request id."""

    caller: Caller
    request_id: str
    subject: SubjectConfig = field(init=False)

    def __post_init__(self) -> None:
        assert self.caller.subject is not None, "authenticate first"
        self.subject = self.caller.subject


class McpAdmission:
    """MCP's side of admission: the MCP caller, the typed call, design look-ups."""

    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._admission = svc.admission

    @property
    def runtime(self) -> Runtime:
        return self._svc.runtime

    @property
    def engine_status(self) -> dict[str, Any] | None:
        """The Core's last EngineStatus, as the pool keeps it (no Core call)."""
        return self._svc.runtime.upstream.engine_status

    @property
    def core_reachable(self) -> bool:
        return self._svc.runtime.upstream.up

    @property
    def policy(self) -> Policy:
        return self._svc.runtime.rules.policy

    async def authenticate(self, token: str | None, source_ip: str, request_id: str) -> McpCaller:
        """The caller of a bearer token; raises `Refusal` (401 / throttled) otherwise."""
        caller = Caller(TRANSPORT, source_ip)
        await self._admission.authenticate(caller, token, request_id=request_id, method="mcp")
        return McpCaller(caller, request_id)

    def current(self, mc: McpCaller) -> SubjectConfig:
        """The caller's subject under the current config (rules may have been reloaded)."""
        subject = self._svc.runtime.current_subject(mc.subject.name)
        if subject is None or self._admission.credential(mc.caller) is None:
            raise Refusal(ErrorCode.UNAUTHENTICATED, "Unauthenticated: token revoked")
        return subject

    async def invoke(
        self,
        mc: McpCaller,
        method: str,
        params: Any,
        run: Callable[[], Awaitable[Any]],
        weight: int = 1,
    ) -> Any:
        """One MCP request through `Admission.serve`: charged to the subject's rate limit
        as a call of `method` (audited with `params` when refused), `weight` held in the
        in-flight gate while `run` makes its calls; its result, or raises `Refusal`."""
        self.current(mc)
        served = await self._admission.serve(
            mc.caller, [Work(method, params, weight, run)], mc.request_id
        )
        if isinstance(served, Refusal):
            raise served
        return served[0]

    async def call(
        self, mc: McpCaller, method: str, params: Any, subscriber: Caller | None = None
    ) -> Any:
        """One QRC call through admission (policy, audit, metrics, upstream pool); on the
        subscriber's own session when given, else on the subject's shared one."""
        caller = subscriber if subscriber is not None else mc.caller
        try:
            return await self._admission.call(caller, method, params, mc.request_id)
        except QrcError as exc:
            raise Refusal.of(exc) from None

    async def design(self, mc: McpCaller, method: str, params: dict[str, Any]) -> Any:
        """A design look-up the gateway makes for the caller (`Admission.look_up`)."""
        return await self._admission.look_up(mc.caller, method, params, mc.request_id)

    def subscriber(self, mc: McpCaller, push: Callable[[dict[str, Any]], None]) -> Caller:
        """A caller with its own upstream session, whose change-group pushes go to `push`."""
        caller = Caller(
            TRANSPORT,
            mc.caller.source_ip,
            subject=mc.subject,
            token_hash=mc.caller.token_hash,
            expires=mc.caller.expires,
        )
        self._admission.open_session(caller, push)
        return caller

    async def release(self, caller: Caller) -> None:
        await self._admission.release(caller)

    def count(self, mc: McpCaller, method: str, outcome: str) -> None:
        """Count a call answered without the Core (e.g. from the design cache)."""
        self._svc.runtime.metrics.requests.labels(
            method_label(method), mc.subject.name, TRANSPORT, outcome
        ).inc()
