"""`SubscriptionHub`: the union of every client's change-group controls, held on the Core
in a few shared change groups and polled at a rate the gateway controls. The loop and
the Core calls live here; the cache in `hubcache`, the packing into groups in
`placement`.

Clients' groups never reach the Core (see `groups.ClientGroup`); they diff against
the hub's latest-state cache, which carries a version per control (docs/changegroups.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from qsys_protocol.qrc.client import ConnectionClosed
from qsys_protocol.qrc.errors import ErrorCode, QrcError
from qsys_protocol.qrc.methods import MAX_ITEMS

from .connection import Busy, NotConnected, UpstreamConnection
from .errors import CoreTimeout, CoreUnavailable
from .hubcache import Entry, HubCache, Key, change_of, key_of, state_of
from .placement import CORE_GROUP_PREFIX, CoreGroup, add_calls, free_room, pack

__all__ = [
    "CORE_GROUP_PREFIX",
    "POLL_INTERVAL",
    "RESERVED_PENDING",
    "Entry",
    "Key",
    "SubscriptionHub",
    "change_of",
    "key_of",
    "state_of",
]

log = logging.getLogger("qsys_gateway.upstream")

POLL_INTERVAL = 0.05
"""Seconds between the hub's polls of its Core groups (the Core-side poll rate)."""
CONTROLS_PER_CORE_GROUP = MAX_ITEMS
MAX_CORE_GROUPS = 4
"""Core change groups the hub may hold, all on one upstream connection."""
_LINK_ERRORS = (NotConnected, ConnectionClosed)
"""The hub's connection is gone: its Core groups went with it."""
RESERVED_PENDING = 2 * MAX_CORE_GROUPS + 8
"""Pending slots of a connection only the hub may use beyond `max_pending`, so client
calls filling a connection never starve its polls (a Busy poll is skipped, not fatal)."""


class HubOwner(Protocol):
    """What the hub asks of the pool."""

    def pick(self) -> UpstreamConnection | None: ...
    @property
    def request_timeout(self) -> float: ...
    def hub_changed(self, core_groups: int, polls: int) -> None: ...


class SubscriptionHub:
    """Refcounted union of subscribed controls, packed into at most `MAX_CORE_GROUPS`
    Core groups on one connection, polled every `POLL_INTERVAL` seconds."""

    def __init__(
        self,
        owner: HubOwner,
        *,
        poll_interval: float = POLL_INTERVAL,
        max_core_groups: int = MAX_CORE_GROUPS,
        controls_per_group: int = CONTROLS_PER_CORE_GROUP,
    ) -> None:
        self._owner = owner
        self.poll_interval = poll_interval
        self.max_core_groups = max_core_groups
        self.controls_per_group = controls_per_group
        self.cache = HubCache(max_core_groups * controls_per_group)
        self.entries = self.cache.entries
        self._groups: list[CoreGroup] = []
        self.conn: UpstreamConnection | None = None
        self.polls = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._compact = False
        self._task: asyncio.Task[None] | None = None
        self._refresh_waiters: list[asyncio.Future[None]] = []
        self._refresh_wake = asyncio.Event()
        self.refreshes = 0  # polls made early because a write passed through

    # ---- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="qsys-upstream-hub"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        self._release_waiters(self._refresh_waiters)
        self._refresh_waiters = []
        self._unplace()

    @property
    def placed(self) -> bool:
        return self.conn is not None and self.conn.up

    @property
    def core_group_count(self) -> int:
        return len(self._groups) if self.placed else 0

    @property
    def live(self) -> int:
        return self.cache.live

    @property
    def version(self) -> int:
        """The highest version handed out (cheap "anything new?" test)."""
        return self.cache.version

    @property
    def per_subject(self) -> int:
        """Distinct controls one subject's groups may hold in the hub (its share)."""
        return self.cache.per_subject

    @per_subject.setter
    def per_subject(self, value: int) -> None:
        self.cache.per_subject = value

    def connection_changed(self) -> None:
        """A connection came up or went down: re-place the groups if theirs is gone."""
        if self.conn is not None and not self.conn.up:
            self._unplace()
        self._wake.set()

    # ---- subscriptions --------------------------------------------------------------

    async def subscribe(self, keys: Iterable[Key], owner: str = "") -> None:
        """Add one reference to each key for subject `owner`; new keys are validated by
        the Core (its AddControl / AddComponentControl on a hub group) and their values
        fetched. Raises the Core's error (7 / 8), or error 5 when `owner` would hold more
        than its share (`per_subject`), and changes nothing then."""
        wanted = list(dict.fromkeys(keys))
        async with self._lock:
            self.cache.check_share(owner, wanted)
            new = [k for k in wanted if k not in self.entries]
            if new:
                await self._add_new(new)
            stale = [k for k in wanted if k not in new and self._stale(k)]
            if stale:
                await self._refetch(stale)
            self.cache.hold(owner, wanted)
        self._wake.set()

    def _stale(self, key: Key) -> bool:
        """The cached value may predate an outage: the groups were lost and the Core has
        not reported this control since."""
        return self.entries[key].stale

    async def _refetch(self, keys: list[Key]) -> None:
        """Current values for already subscribed keys a new group adds right after an
        outage, so its first poll returns what the Core holds now (as a Core's does).
        While the Core is away the cached values stand; the next poll corrects them."""
        try:
            conn = await self._ensure_placed()
        except (QrcError, CoreUnavailable):
            return
        await self._fetch(conn, keys)

    async def release(self, keys: Iterable[Key], owner: str = "") -> None:
        """Drop one reference of subject `owner` from each key. Unreferenced controls stay
        on the Core until nothing is referenced (then the hub's groups are destroyed) or
        they outnumber the live ones (then the groups are rebuilt with the live ones only)."""
        self.cache.drop(owner, keys)
        live = self.live
        if live == 0 and self.entries:
            async with self._lock:
                if self.live == 0:
                    await self._teardown()
        elif len(self.entries) - live > max(64, live):
            self._compact = True
            self._wake.set()

    def state(self, key: Key) -> Entry | None:
        return self.entries.get(key)

    async def refresh(self) -> None:
        """Return after a hub poll that began after this call: a write that passed through
        is then in the cache, so every client group holding the control (the writer's
        and everyone else's) sees it at its next poll. Concurrent callers share that
        poll, so a burst of writes costs about one extra Core poll, not one each.
        Bounded by the request timeout; a poll that fails releases its waiters too."""
        if not self.entries or self._task is None or self._task.done():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._refresh_waiters.append(waiter)
        self._refresh_wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._owner.request_timeout):
                await waiter

    @staticmethod
    def _release_waiters(waiters: list[asyncio.Future[None]]) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _add_new(self, new: list[Key]) -> None:
        conn = await self._ensure_placed()
        if len(new) > free_room(self._groups, self.max_core_groups, self.controls_per_group):
            self._compact = True
            self._wake.set()
            raise QrcError(
                ErrorCode.CHANGE_GROUPS_EXHAUSTED,
                "Change groups exhausted: the gateway subscribes at most "
                f"{self.max_core_groups * self.controls_per_group} controls on the Core",
            )
        for k in new:
            self.entries[k] = Entry(k)
        try:
            placed = await self._add_to_core(conn, new)
        except BaseException:
            for k in new:
                entry = self.entries.get(k)
                if entry is not None and entry.refs == 0 and entry.slot < 0:
                    del self.entries[k]
            raise
        for group, keys in placed:
            for k in keys:
                self.entries[k].slot = group.slot
        self._report()
        await self._fetch(conn, new)

    async def _add_to_core(
        self, conn: UpstreamConnection, keys: list[Key]
    ) -> list[tuple[CoreGroup, list[Key]]]:
        """Place `keys` on the Core as `placement.pack` chunks them. Chunks the Core
        accepted count in their group even when a later chunk fails. Returns what went
        where."""
        placed: list[tuple[CoreGroup, list[Key]]] = []
        try:
            for group, chunk in pack(self._groups, keys, self.controls_per_group):
                for method, params in add_calls(group.id, chunk):
                    await self._request(conn, method, params)
                group.keys.update(chunk)
                placed.append((group, chunk))
        finally:
            while self._groups and not self._groups[-1].keys:
                self._groups.pop()  # created for nothing: never reached the Core
        return placed

    async def _fetch(self, conn: UpstreamConnection, keys: list[Key]) -> None:
        """Current values of newly subscribed controls, so a client's first poll after
        adding them has them at once (the hub's next poll reports them again; equal
        values are not delivered twice)."""
        by_component: dict[str, list[str]] = {}
        for component, name in keys:
            by_component.setdefault(component, []).append(name)
        try:
            for component, names in by_component.items():
                for i in range(0, len(names), MAX_ITEMS):
                    chunk = names[i : i + MAX_ITEMS]
                    if component:
                        result = await self._request(
                            conn,
                            "Component.Get",
                            {"Name": component, "Controls": [{"Name": n} for n in chunk]},
                        )
                        controls = result.get("Controls", []) if isinstance(result, dict) else []
                        self.apply(
                            [
                                {**c, "Component": component}
                                for c in controls
                                if isinstance(c, dict)
                            ],
                            fetched=True,
                        )
                    else:
                        result = await self._request(conn, "Control.Get", chunk)
                        self.apply(result if isinstance(result, list) else [], fetched=True)
        except (QrcError, CoreUnavailable) as exc:
            # the values arrive with the hub's next poll instead
            log.info("could not fetch values of new subscriptions: %s", exc)

    # ---- Core side --------------------------------------------------------------------

    async def _request(self, conn: UpstreamConnection, method: str, params: Any) -> Any:
        """One call on the hub's connection. Only a lost link unplaces the groups; a
        full or slow connection fails this call alone (its groups are still there)."""
        try:
            resp = await conn.request(
                method, params, self._owner.request_timeout, reserve=RESERVED_PENDING
            )
        except _LINK_ERRORS:
            if self.conn is conn:
                self._unplace()
            raise CoreUnavailable("no connection to the Core", 1.0) from None
        except Busy:
            raise CoreUnavailable("too many pending calls on the Core connection", 1.0) from None
        except TimeoutError:
            raise CoreTimeout(self._owner.request_timeout) from None
        if resp.error is not None:
            raise QrcError.from_error_object(resp.error)
        return resp.result

    async def _ensure_placed(self) -> UpstreamConnection:
        """The connection the hub's groups live on, (re)creating them there if needed.
        Must be called with the lock held."""
        if self.placed and not self._compact:
            assert self.conn is not None
            return self.conn
        conn = self.conn if self.placed else self._owner.pick()
        if conn is None:
            raise CoreUnavailable("no connection to the Core", 1.0)
        if self.conn is conn:  # compaction: rebuild on the same socket
            for group in self._groups:
                with contextlib.suppress(QrcError, CoreUnavailable):
                    await self._request(conn, "ChangeGroup.Destroy", {"Id": group.id})
        self._compact = False
        self._unplace()
        self.cache.prune()
        for entry in self.entries.values():
            entry.initial = True
        try:
            placed = await self._add_to_core(conn, list(self.entries))
        except (QrcError, CoreUnavailable):
            self._groups.clear()
            raise
        for group, keys in placed:
            for k in keys:
                self.entries[k].slot = group.slot
        self.conn = conn
        self._report()
        return conn

    def _unplace(self) -> None:
        self.conn = None
        self._groups.clear()
        for entry in self.entries.values():
            entry.slot = -1
            entry.stale = True
        self._report()

    async def _teardown(self) -> None:
        conn = self.conn
        groups = list(self._groups)
        self.entries.clear()
        self._unplace()
        if conn is not None and conn.up:
            for group in groups:
                with contextlib.suppress(QrcError, CoreUnavailable):
                    await self._request(conn, "ChangeGroup.Destroy", {"Id": group.id})

    def apply(self, changes: list[Any], *, fetched: bool = False) -> None:
        """Take changes reported by the Core (a hub poll or a fetch) into the cache."""
        self.cache.apply(changes, fetched=fetched)

    async def _poll_once(self) -> None:
        waiters, self._refresh_waiters = self._refresh_waiters, []
        if waiters:
            self.refreshes += 1
        try:
            await self._poll_groups()
        finally:
            self._release_waiters(waiters)

    async def _poll_groups(self) -> None:
        async with self._lock:
            try:
                conn = await self._ensure_placed()
            except (QrcError, CoreUnavailable) as exc:
                log.warning("could not place the change-group hub on the Core: %s", exc)
                raise CoreUnavailable("hub not placed", 1.0) from None
            groups = list(self._groups)
        results = await asyncio.gather(
            *(self._request(conn, "ChangeGroup.Poll", {"Id": g.id}) for g in groups),
            return_exceptions=True,
        )
        self.polls += len(groups)
        self._owner.hub_changed(self.core_group_count, len(groups))
        for group, result in zip(groups, results, strict=True):
            if isinstance(result, QrcError) and result.code == ErrorCode.UNKNOWN_CHANGE_GROUP:
                log.warning("the Core lost change group %s; re-creating the hub", group.id)
                if self.conn is conn:
                    self._unplace()
            elif isinstance(result, dict):
                changes = result.get("Changes")
                self.apply(changes if isinstance(changes, list) else [])

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.entries:
                self._release_waiters(self._refresh_waiters)
                self._refresh_waiters = []
                self._wake.clear()
                await self._wake.wait()
                continue
            started = loop.time()
            try:
                await self._poll_once()
            except (QrcError, CoreUnavailable):
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._wake.wait()
                continue
            if self._refresh_waiters:
                continue  # a write is waiting: poll again now
            self._refresh_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, started + self.poll_interval - loop.time())):
                    await self._refresh_wake.wait()

    def _report(self) -> None:
        self._owner.hub_changed(self.core_group_count, 0)
