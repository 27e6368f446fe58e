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
    owner: str = ""  # the subject whose quota it counts against
    autopoll: float | None = None
    next_push: float = 0.0  # loop time of its next AutoPoll push (see UpstreamSession)
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


class GroupLedger:
    """Every client change group of the gateway, at most `per_session` per session,
    `per_subject` per owner (subject) and `total` in all; `on_change(count)` hears each
    change of the count (for the gauge)."""

    def __init__(
        self,
        per_session: int,
        total: int,
        on_change: Callable[[int], None] | None = None,
        per_subject: int | None = None,
    ) -> None:
        self.per_session = per_session
        self.per_subject = per_subject if per_subject is not None else total
        self.total = total
        self._on_change = on_change
        self._groups: set[ClientGroup] = set()
        self._by_owner: dict[str, int] = {}

    def of(self, owner: str) -> int:
        return self._by_owner.get(owner, 0)

    def __len__(self) -> int:
        return len(self._groups)

    def create(self, client_id: GroupId, session_groups: int, owner: str = "") -> ClientGroup:
        """A new group for a session that holds `session_groups`; error 5 beyond a bound."""
        if session_groups >= self.per_session:
            raise QrcError(
                ErrorCode.CHANGE_GROUPS_EXHAUSTED,
                f"Change groups exhausted: at most {self.per_session} per session",
            )
        if self.of(owner) >= self.per_subject:
            raise QrcError(
                ErrorCode.CHANGE_GROUPS_EXHAUSTED,
                f"Change groups exhausted: at most {self.per_subject} per subject",
            )
        if len(self._groups) >= self.total:
            raise QrcError(
                ErrorCode.CHANGE_GROUPS_EXHAUSTED,
                f"Change groups exhausted: the gateway holds its maximum of {self.total}",
            )
        group = ClientGroup(client_id=client_id, owner=owner)
        self._groups.add(group)
        self._by_owner[owner] = self.of(owner) + 1
        self._changed()
        return group

    def discard(self, group: ClientGroup) -> None:
        if group in self._groups:
            self._groups.discard(group)
            left = self.of(group.owner) - 1
            if left > 0:
                self._by_owner[group.owner] = left
            else:
                self._by_owner.pop(group.owner, None)
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(len(self._groups))
