"""Circuit breaker in front of the Core."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from .errors import CoreUnavailable

CircuitState = Literal["closed", "half_open", "open"]
STATE_VALUES: dict[CircuitState, int] = {"closed": 0, "half_open": 1, "open": 2}


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures (timeouts, connections lost
    mid-call); after `reset_timeout` seconds it lets a single probe call through
    (half-open). The probe's success closes the circuit, its failure re-opens it.

    Answers from the Core, including its error objects, count as success: the Core is
    alive. Calls that never reached the Core (no connection) count as neither.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 10.0,
        *,
        on_change: Callable[[CircuitState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or reset_timeout <= 0:
            raise ValueError("circuit needs failure_threshold >= 1 and reset_timeout > 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._on_change = on_change
        self._clock = clock
        self._state: CircuitState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_out = False

    @property
    def state(self) -> CircuitState:
        if self._state == "open" and self._clock() - self._opened_at >= self.reset_timeout:
            self._set("half_open")
        return self._state

    def retry_after(self) -> float:
        if self._state == "open":
            return max(0.0, self._opened_at + self.reset_timeout - self._clock())
        return 0.0

    def acquire(self) -> bool:
        """Admit one call or raise -32050; returns True when the call is the half-open probe."""
        state = self.state
        if state == "closed":
            return False
        if state == "half_open" and not self._probe_out:
            self._probe_out = True
            return True
        retry = self.retry_after() if state == "open" else min(1.0, self.reset_timeout)
        raise CoreUnavailable("circuit open", retry_after=retry)

    def release(self, probe: bool) -> None:
        """The admitted call never reached the Core."""
        if probe:
            self._probe_out = False

    def success(self, probe: bool = False) -> None:
        self._failures = 0
        if probe:
            self._probe_out = False
        if self._state != "closed" and (probe or self._state == "half_open"):
            self._set("closed")

    def failure(self, probe: bool = False) -> None:
        if probe:
            self._probe_out = False
        self._failures += 1
        if probe or self._state == "half_open" or self._failures >= self.failure_threshold:
            if self._state != "open" or probe:
                self._opened_at = self._clock()
            self._set("open")

    def _set(self, state: CircuitState) -> None:
        if state != self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)
