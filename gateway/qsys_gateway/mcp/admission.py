"""The one seam between MCP and the gateway's request path.

Everything the MCP endpoint asks of authentication, rate limiting, policy,
audit, metrics and the upstream goes through `Admission`, so that moving to a
different admission layer changes this module only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from ..config import SubjectConfig
from ..pipeline import Caller, outcome_of
from ..policy import Policy
from ..qrc.errors import ErrorCode, QrcError
from ..runtime import Runtime
from ..transports.common import Refusal, Services, authenticate, rate_limit
from ..upstream import UpstreamSession

TRANSPORT = "mcp"
__all__ = ["TRANSPORT", "Admission", "Denied", "McpCaller", "outcome_of"]


class Denied(Exception):
    """A call refused before or by the pipeline; `error` is the gateway's QRC error."""

    def __init__(self, error: QrcError, retry_after: float = 0.0) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


@dataclass(slots=True)
class McpCaller:
    """One authenticated MCP HTTP request."""

    subject: SubjectConfig
    source_ip: str
    request_id: str


class Admission:
    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._ids = itertools.count(1)

    @property
    def runtime(self) -> Runtime:
        return self._svc.runtime

    def authenticate(self, token: str | None, source_ip: str, request_id: str) -> SubjectConfig:
        """The subject of a bearer token; raises `Denied` (401 / throttled) otherwise."""
        try:
            return authenticate(
                self._svc,
                token=token,
                user=None,
                source_ip=source_ip,
                transport=TRANSPORT,
                rid=request_id,
                obj={"method": "mcp"},
            )
        except Refusal as err:
            raise Denied(err, err.retry_after) from None

    def current(self, caller: McpCaller) -> SubjectConfig:
        """The caller's subject under the current config (rules may have been reloaded)."""
        subject = self._svc.runtime.current_subject(caller.subject.name)
        if subject is None or subject.tokenSha256 != caller.subject.tokenSha256:
            raise Denied(QrcError(ErrorCode.UNAUTHENTICATED, "Unauthenticated: token revoked"))
        return subject

    async def admit(self, caller: McpCaller, method: str) -> None:
        """Charge one call to the subject's rate limit; raises `Denied` with a retry time."""
        refused = await rate_limit(
            self._svc,
            self.current(caller),
            [{"method": method}],
            TRANSPORT,
            caller.source_ip,
            caller.request_id,
        )
        if refused is not None:
            raise Denied(refused, getattr(refused, "retry_after", 1.0))

    async def call(
        self, caller: McpCaller, session: UpstreamSession, method: str, params: Any
    ) -> Any:
        """One QRC call through the pipeline (policy, audit, metrics, upstream pool)."""
        subject = self.current(caller)
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            msg["params"] = params
        qrc_caller = Caller(subject, TRANSPORT, caller.source_ip, session)
        response = await self._svc.pipeline.call(qrc_caller, msg, caller.request_id)
        assert response is not None
        error = response.get("error")
        if error is not None:
            raise Denied(QrcError(int(error.get("code", -32603)), str(error.get("message"))))
        return response.get("result")

    def count(self, caller: McpCaller, method: str, outcome: str) -> None:
        """Count a call answered without the Core (e.g. from the design cache)."""
        self._svc.runtime.metrics.requests.labels(
            method, caller.subject.name, TRANSPORT, outcome
        ).inc()

    @property
    def policy(self) -> Policy:
        return self._svc.runtime.rules.policy
