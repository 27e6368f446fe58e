"""Exponential reconnect back-off with jitter."""

from __future__ import annotations

import random


class Backoff:
    """Delays grow `base * 2**n` up to `cap`; each is drawn from [d/2, d] ("equal jitter").

    Jitter keeps the gateway replicas (and their connections) from reconnecting to a
    rebooting Core in lockstep; the lower half-bound keeps a floor under the delay.
    """

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling: float = min(self.cap, self.base * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        return ceiling / 2 + random.random() * ceiling / 2

    def reset(self) -> None:
        self.attempt = 0
