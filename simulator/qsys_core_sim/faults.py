"""Fault injection knobs of the simulator, changed by tests while it runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Faults:
    latency: float = 0.0
    """Seconds added before every reply."""
    swallow_replies: int = 0
    """Number of upcoming replies to read and never answer; -1 swallows all (a hung Core)."""
    drop_on_request: int = 0
    """Number of upcoming requests whose connection is aborted instead of answered."""
    refuse_logon: bool = False
    """Reject every Logon, even with the right credentials."""
    refuse_connections: bool = False
    """Close every new connection at once."""

    def take_swallow(self) -> bool:
        if self.swallow_replies < 0:
            return True
        if self.swallow_replies > 0:
            self.swallow_replies -= 1
            return True
        return False

    def take_drop(self) -> bool:
        if self.drop_on_request > 0:
            self.drop_on_request -= 1
            return True
        return False

    def clear(self) -> None:
        self.latency = 0.0
        self.swallow_replies = 0
        self.drop_on_request = 0
        self.refuse_logon = False
        self.refuse_connections = False
