"""Kopf peering: make sure the peering object exists, and tell whether this replica is active.

Kopf pauses the watches of a replica that sees a live peer of higher priority;
the operator's own resync loop and retries ask `active()` so a paused replica
stays quiet too.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from .k8s import Kube

PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"
CACHE_S = 1.0


class Peering:
    def __init__(
        self,
        kube: Kube,
        *,
        name: str,
        identity: str,
        priority: int,
        namespaces: list[str],
        standalone: bool,
    ) -> None:
        self.kube = kube
        self.name = name
        self.identity = identity
        self.priority = priority
        self.namespaces = namespaces
        self.standalone = standalone
        self._checked = 0.0
        self._active = True

    def _targets(self) -> list[tuple[str, str | None]]:
        if self.namespaces:
            return [("kopfpeerings", ns) for ns in self.namespaces]
        return [("clusterkopfpeerings", None)]

    async def ensure(self) -> None:
        """Create the peering object(s) Kopf patches (it never creates them itself)."""
        if self.standalone:
            return
        for plural, ns in self._targets():
            kind = "KopfPeering" if ns else "ClusterKopfPeering"
            meta: dict[str, Any] = {"name": self.name}
            if ns:
                meta["namespace"] = ns
            body = {
                "apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}",
                "kind": kind,
                "metadata": meta,
            }
            await self.kube.create_custom(PEERING_GROUP, PEERING_VERSION, plural, body, ns)

    async def active(self) -> bool:
        if self.standalone:
            return True
        if time.monotonic() - self._checked < CACHE_S:
            return self._active
        now = datetime.datetime.now(datetime.UTC)
        active = True
        for plural, ns in self._targets():
            obj = await self.kube.get_cluster_custom(
                PEERING_GROUP, PEERING_VERSION, plural, self.name, ns
            )
            for ident, peer in ((obj or {}).get("status") or {}).items():
                if ident == self.identity or not isinstance(peer, dict):
                    continue
                if _alive(peer, now) and int(peer.get("priority", 0)) >= self.priority:
                    active = False
        self._active = active
        self._checked = time.monotonic()
        return active


def _alive(peer: dict[str, Any], now: datetime.datetime) -> bool:
    try:
        seen = datetime.datetime.fromisoformat(str(peer["lastseen"]))
        lifetime = datetime.timedelta(seconds=int(peer.get("lifetime", 60)))
    except (KeyError, ValueError):
        return False
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=datetime.UTC)
    return seen + lifetime > now
