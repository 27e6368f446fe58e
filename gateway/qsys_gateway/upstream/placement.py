"""Placement of the hub's controls into Core change groups: at most `max_groups`
groups of at most `per_group` controls, filled in slot order; pure, the hub sends the
calls."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from qsys_protocol.qrc.methods import MAX_ITEMS

from .hubcache import Key

CORE_GROUP_PREFIX = "gw.hub."


@dataclass(slots=True)
class CoreGroup:
    slot: int
    keys: set[Key] = field(default_factory=set)

    @property
    def id(self) -> str:
        return f"{CORE_GROUP_PREFIX}{self.slot}"


def free_room(groups: list[CoreGroup], max_groups: int, per_group: int) -> int:
    """Controls that still fit: room in the groups there are and in those not yet made."""
    return sum(per_group - len(g.keys) for g in groups) + (max_groups - len(groups)) * per_group


def pack(
    groups: list[CoreGroup], keys: list[Key], per_group: int
) -> Iterator[tuple[CoreGroup, list[Key]]]:
    """Chunks of `keys` for the groups with room, in slot order, appending groups to
    `groups` as needed (the caller drops trailing ones it left empty). A chunk counts in
    its group once the caller has placed it on the Core."""
    pending = list(keys)
    slot = 0
    while pending:
        if slot == len(groups):
            groups.append(CoreGroup(slot))
        group = groups[slot]
        room = max(0, per_group - len(group.keys))
        chunk, pending = pending[:room], pending[room:]
        slot += 1
        if chunk:
            yield group, chunk


def add_calls(group_id: str, keys: list[Key]) -> list[tuple[str, dict[str, Any]]]:
    """The Core calls that add `keys` to one group: AddControl for Named Controls, one
    AddComponentControl per component, each at most `MAX_ITEMS` controls."""
    named = [n for c, n in keys if not c]
    by_component: dict[str, list[str]] = {}
    for component, name in keys:
        if component:
            by_component.setdefault(component, []).append(name)
    calls: list[tuple[str, dict[str, Any]]] = []
    for i in range(0, len(named), MAX_ITEMS):
        calls.append(
            ("ChangeGroup.AddControl", {"Id": group_id, "Controls": named[i : i + MAX_ITEMS]})
        )
    for component, names in by_component.items():
        for i in range(0, len(names), MAX_ITEMS):
            refs = [{"Name": n} for n in names[i : i + MAX_ITEMS]]
            calls.append(
                (
                    "ChangeGroup.AddComponentControl",
                    {"Id": group_id, "Component": {"Name": component, "Controls": refs}},
                )
            )
    return calls
