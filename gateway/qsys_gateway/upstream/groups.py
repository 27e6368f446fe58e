"""Client change groups, held by the gateway: which controls each watches and which
version of each it has been given (`ClientGroup`), and how many the gateway holds within
its bounds (`GroupLedger`). Values come from the `SubscriptionHub` cache."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qsys_protocol.qrc.errors import ErrorCode, QrcError

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
    autopoll_task: asyncio.Task[None] | None = None
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
        task, self.autopoll_task = self.autopoll_task, None
        if task is not None:
            task.cancel()


class GroupLedger:
    """Every client change group of the gateway, at most `per_session` per session and
    `total` in all; `on_change(count)` hears each change of the count (for the gauge)."""

    def __init__(
        self, per_session: int, total: int, on_change: Callable[[int], None] | None = None
    ) -> None:
        self.per_session = per_session
        self.total = total
        self._on_change = on_change
        self._groups: set[ClientGroup] = set()

    def __len__(self) -> int:
        return len(self._groups)

    def create(self, client_id: GroupId, session_groups: int) -> ClientGroup:
        """A new group for a session that holds `session_groups`; error 5 beyond a bound."""
        if session_groups >= self.per_session:
            raise QrcError(
                ErrorCode.CHANGE_GROUPS_EXHAUSTED,
                f"Change groups exhausted: at most {self.per_session} per session",
            )
        if len(self._groups) >= self.total:
            raise QrcError(
                ErrorCode.CHANGE_GROUPS_EXHAUSTED,
                f"Change groups exhausted: the gateway holds its maximum of {self.total}",
            )
        group = ClientGroup(client_id=client_id)
        self._groups.add(group)
        self._changed()
        return group

    def discard(self, group: ClientGroup) -> None:
        self._groups.discard(group)
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(len(self._groups))
