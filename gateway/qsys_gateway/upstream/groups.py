"""A client's change group, held by the gateway: which controls it watches and which
version of each it has been given. Values come from the `SubscriptionHub` cache."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .hub import Key, SubscriptionHub, change_of

GroupId = str | int

ReadCheck = Callable[[str, str], bool]
"""`can_read(component, control)` under the current policy ("" for a Named Control)."""


@dataclass(eq=False, slots=True)
class ClientGroup:
    """`delivered` maps each control to the hub version last given to this client
    (-1: never, so the next poll returns its current value, as a Core's first poll does)."""

    client_id: GroupId
    delivered: dict[Key, int] = field(default_factory=dict)
    autopoll: float | None = None
    next_push: float = 0.0
    seen: int = -1  # hub.version at the last poll that found nothing newer (fast path)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def invalidate(self) -> None:
        for key in self.delivered:
            self.delivered[key] = -1
        self.seen = -1

    def poll(self, hub: SubscriptionHub, can_read: ReadCheck | None) -> list[dict[str, Any]]:
        """The changes of this group's controls since its previous poll, in the order the
        controls were added. Controls the client may no longer read are left out (and
        stay undelivered: a config that allows them again delivers their value)."""
        if self.seen == hub.version:
            return []
        hub_version = hub.version
        changes: list[dict[str, Any]] = []
        pending = False
        for key, delivered in self.delivered.items():
            entry = hub.state(key)
            if entry is None or entry.state is None or entry.version <= delivered:
                if entry is None or entry.state is None:
                    pending = True
                continue
            if can_read is not None and not can_read(*key):
                pending = True
                continue
            changes.append(change_of(key, entry.state))
            self.delivered[key] = entry.version
        self.seen = -1 if pending else hub_version
        return changes

    def stop_autopoll(self) -> None:
        self.autopoll = None
