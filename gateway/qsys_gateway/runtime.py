"""The live, hot-swappable state of one gateway process.

A config reload builds new policy/auth objects and swaps them in one
assignment, so in-flight calls finish under the rules they started with.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from qsys_protocol.config import GatewayConfig, SubjectConfig

from .audit import AuditLog
from .auth import Authenticator, FailureThrottle
from .inflight import TOTAL, WeightedGate
from .metrics import GatewayMetrics
from .policy import Policy
from .ratelimit import RateLimiter, bucket_scope
from .sendbudget import SendBudget
from .tokenreview import TokenReviewer
from .upstream import UpstreamPool

log = logging.getLogger("qsys_gateway.runtime")


@dataclass(frozen=True, slots=True)
class Rules:
    """Everything derived from one config generation."""

    config: GatewayConfig
    authenticator: Authenticator
    policy: Policy
    generation: int
    subjects: dict[str, SubjectConfig]
    """The config's subjects by name (asked a few times per call)."""

    @classmethod
    def build(cls, config: GatewayConfig, generation: int) -> Rules:
        legacy = [s.name for s in config.subjects if s.tokenSha256]
        if legacy:
            log.warning(
                "subjects %s use the deprecated unkeyed tokenSha256; re-render the config "
                "with tokenHmacSha256 (the operator does so on its next reconcile)",
                ", ".join(legacy[:10]),
            )
        auth = Authenticator(config.subjects, config.auth.token_key())
        by_name = {s.name: s for s in reversed(config.subjects)}  # the first of a name wins
        return cls(config, auth, Policy(config.subjects), generation, by_name)


class Runtime:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        metrics: GatewayMetrics,
        limiter: RateLimiter,
        upstream: UpstreamPool,
        audit: AuditLog,
    ) -> None:
        self.rules = Rules.build(config, 1)
        self.metrics = metrics
        self.limiter = limiter
        self.upstream = upstream
        self.token_review: TokenReviewer | None = None
        self._apply_limits(config)
        self._apply_token_review(config)
        self.audit = audit
        self.throttle = FailureThrottle()
        self.send_budget = SendBudget()
        self.in_flight_gate = WeightedGate(TOTAL)
        metrics.send_queue_bytes.set_function(lambda: self.send_budget.used)
        self.shutting_down = False
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def call_started(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def call_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    @property
    def config(self) -> GatewayConfig:
        return self.rules.config

    def current_subject(self, name: str) -> SubjectConfig | None:
        """A subject as the current config knows it (None once it was removed)."""
        return self.rules.subjects.get(name)

    def apply(self, config: GatewayConfig) -> list[str]:
        """Swap in a new config; returns the sections that only a restart applies."""
        old = self.rules.config
        pending = [
            name for name in ("core", "listen") if getattr(old, name) != getattr(config, name)
        ]
        if old.limits.storage != config.limits.storage:
            pending.append("limits.storage")
        if old.audit.path != config.audit.path:
            pending.append("audit.path")
        self.rules = Rules.build(config, self.rules.generation + 1)
        self._apply_limits(config)
        self._apply_token_review(config)
        return pending

    def _apply_token_review(self, config: GatewayConfig) -> None:
        """ServiceAccount subjects on, off or changed: the reviewer (and its cache) lives
        as long as some subject needs it."""
        settings = config.tokenReview
        if settings is None:
            if self.token_review is not None:
                self.token_review.close()
                self.token_review = None
            return
        accounts = {s.serviceAccount for s in config.subjects if s.serviceAccount}
        if self.token_review is None:
            self.token_review = TokenReviewer(settings, self.metrics)
        else:
            self.token_review.configure(settings, accounts)

    def close(self) -> None:
        if self.token_review is not None:
            self.token_review.close()
            self.token_review = None

    def _apply_limits(self, config: GatewayConfig) -> None:
        self.limiter.scope = bucket_scope(config)
        self.upstream.groups.per_session = config.limits.maxChangeGroupsPerConnection
        self.upstream.groups.per_subject = config.limits.maxChangeGroupsPerSubject
        self.upstream.hub.per_subject = config.limits.maxHubControlsPerSubject
        self.upstream.shares.limit = config.limits.maxPendingCoreCallsPerSubject
