"""The hub's cache: every subscribed control's latest state from the Core, with a
version per change and the references client groups (per subject) hold on it."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from qsys_protocol.qrc.errors import ErrorCode, QrcError

Key = tuple[str, str]
"""(component name, control name); the component is "" for a Named Control."""


@dataclass(slots=True)
class Entry:
    """One subscribed control: its latest state from the Core and how many client
    groups hold it. `state` holds the Core's fields except Name/Component."""

    key: Key
    refs: int = 0
    state: dict[str, Any] | None = None
    version: int = 0
    slot: int = -1  # index of the Core group it is in; -1: not on the Core yet
    initial: bool = True  # the next report is a (re)subscription dump: deliver only if different
    stale: bool = False  # the hub's groups were lost since the Core last reported this control


def change_of(key: Key, state: dict[str, Any]) -> dict[str, Any]:
    """A change in the Core's result shape."""
    component, name = key
    out: dict[str, Any] = {"Name": name}
    if component:
        out["Component"] = component
    out.update(state)
    return out


def key_of(change: Any) -> Key | None:
    if not isinstance(change, dict):
        return None
    name = change.get("Name")
    component = change.get("Component") or ""
    if not isinstance(name, str) or not isinstance(component, str):
        return None
    return (component, name)


def state_of(change: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in change.items() if k not in ("Name", "Component")}


class HubCache:
    """Entries by key, references per subject (its share: `per_subject` distinct
    controls) and the version counter."""

    def __init__(self, per_subject: int) -> None:
        self.entries: dict[Key, Entry] = {}
        self.per_subject = per_subject
        self._held: dict[str, dict[Key, int]] = {}  # subject -> control -> its references
        self._versions = itertools.count(1)
        self.version = 0  # the highest version handed out (cheap "anything new?" test)

    @property
    def live(self) -> int:
        return sum(1 for e in self.entries.values() if e.refs > 0)

    def check_share(self, owner: str, wanted: list[Key]) -> None:
        """Raise error 5 when `owner` would hold more than its share."""
        mine = self._held.get(owner, {})
        more = sum(1 for k in wanted if k not in mine)
        if more and len(mine) + more > self.per_subject:
            raise QrcError(
                ErrorCode.CHANGE_GROUPS_EXHAUSTED,
                "Change groups exhausted: one subject's change groups may watch at most "
                f"{self.per_subject} controls (limits.maxHubControlsPerSubject); "
                f"{len(mine)} watched, {more} more asked",
            )

    def hold(self, owner: str, wanted: list[Key]) -> None:
        """One more reference of `owner` on each (already entered) key."""
        for k in wanted:
            self.entries[k].refs += 1
        if wanted:
            mine = self._held.setdefault(owner, {})
            for k in wanted:
                mine[k] = mine.get(k, 0) + 1

    def drop(self, owner: str, keys: Iterable[Key]) -> None:
        mine = self._held.get(owner, {})
        for k in keys:
            entry = self.entries.get(k)
            if entry is not None and entry.refs > 0:
                entry.refs -= 1
            held = mine.get(k, 0)
            if held > 1:
                mine[k] = held - 1
            elif held:
                del mine[k]
        if not mine:
            self._held.pop(owner, None)

    def prune(self) -> None:
        """Forget the controls no group references any more."""
        for k in [k for k, e in self.entries.items() if e.refs == 0]:
            del self.entries[k]

    def apply(self, changes: list[Any], *, fetched: bool = False) -> None:
        """Take changes reported by the Core (a hub poll or a fetch) into the cache."""
        for change in changes:
            key = key_of(change)
            entry = self.entries.get(key) if key is not None else None
            if entry is None:
                continue
            state = state_of(change)
            entry.stale = False
            if entry.initial or fetched:
                # a dump of current values: only a different value is a change
                if not fetched:
                    entry.initial = False
                if entry.state == state:
                    continue
            entry.state = state
            entry.version = self.version = next(self._versions)
