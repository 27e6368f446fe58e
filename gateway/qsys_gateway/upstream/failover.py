"""Which unit of a (possibly redundant) Core the connections should use."""

from __future__ import annotations

import logging

log = logging.getLogger("qsys_gateway.upstream")


class HostSelector:
    """Sticky choice between `host` and `redundantHost`.

    All connections follow one active host. It moves to the other unit when a
    connection to it fails (refused, unreachable, hung handshake) or when the unit
    says it is on standby; it never moves back just because the other unit returned,
    since in a redundant pair only one unit is active at a time. The switch is a
    compare-and-set, so several connections reporting the same failure move it once.
    """

    def __init__(self, host: str, redundant: str | None) -> None:
        self.hosts = [host] if not redundant or redundant == host else [host, redundant]
        self._active = 0

    @property
    def active(self) -> str:
        return self.hosts[self._active]

    def fail(self, host: str, reason: str) -> bool:
        """Move away from `host` if it is the active one; True when the active host changed."""
        if len(self.hosts) < 2 or host != self.active:
            return False
        self._active = (self._active + 1) % len(self.hosts)
        log.warning("core %s %s; switching to %s", host, reason, self.active)
        return True
