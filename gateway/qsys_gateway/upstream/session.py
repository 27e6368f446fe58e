"""`UpstreamSession`: one client's view of the shared upstream, with its change groups renamed."""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..qrc.client import ConnectionClosed
from ..qrc.errors import ErrorCode, QrcError
from ..qrc.methods import (
    ChangeGroupAddComponentControlParams,
    ChangeGroupAddControlParams,
    ChangeGroupAutoPollParams,
    ChangeGroupIdParams,
    ChangeGroupRemoveParams,
    parse_params,
)
from .connection import Busy, NotConnected
from .errors import CoreUnavailable
from .groups import GroupRecord, place

if TYPE_CHECKING:
    from .pool import Upstream

log = logging.getLogger("qsys_gateway.upstream")

_ADD_METHODS = frozenset({"ChangeGroup.AddControl", "ChangeGroup.AddComponentControl"})


class UpstreamSession:
    """Created by `Upstream.open_session`; close it when the client goes away."""

    def __init__(
        self, upstream: Upstream, sid: int, push: Callable[[dict[str, Any]], None]
    ) -> None:
        self._upstream = upstream
        self.id = sid
        self._push = push
        self._groups: dict[str, GroupRecord] = {}
        self._group_seq = itertools.count(1)
        self.closed = False

    @property
    def group_ids(self) -> list[str | int]:
        return [rec.client_id for rec in self._groups.values()]

    async def call(self, method: str, params: Any, *, timeout: float | None = None) -> Any:
        if self.closed:
            raise QrcError(ErrorCode.INVALID_REQUEST, "Invalid request: session closed")
        if not method.startswith("ChangeGroup."):
            return await self._upstream.call(method, params, timeout=timeout)
        parsed = parse_params(method, params)
        assert parsed is not None
        gid = parsed.Id if isinstance(parsed, ChangeGroupIdParams) else getattr(parsed, "Id", None)
        assert isinstance(gid, str | int)
        while True:
            rec = self._groups.get(str(gid))
            created = False
            if rec is None:
                if method not in _ADD_METHODS:
                    raise QrcError(ErrorCode.UNKNOWN_CHANGE_GROUP, "Unknown change group")
                rec, created = self._new_group(gid), True
            async with rec.lock:
                if self._groups.get(str(gid)) is not rec:
                    continue  # destroyed (or its failed creation undone) while we waited
                if method == "ChangeGroup.Destroy":
                    await self._destroy(rec, timeout)
                    return True
                try:
                    return await self._group_call(rec, method, parsed, timeout)
                finally:
                    if created and rec.empty:
                        self._forget(rec)

    async def _group_call(
        self, rec: GroupRecord, method: str, parsed: Any, timeout: float | None
    ) -> Any:
        up = self._upstream
        was_empty = rec.empty
        if was_empty and method not in _ADD_METHODS:
            return self._answer_empty(rec, method, parsed)
        await self._ensure_placed(rec)
        params: dict[str, Any] = parsed.model_dump(mode="json", exclude_none=True)
        params["Id"] = rec.upstream_id
        result = await up.forward(method, params, timeout=timeout, conn=rec.conn)
        if isinstance(parsed, ChangeGroupAddControlParams):
            rec.named.update(dict.fromkeys(parsed.Controls))
            if was_empty and rec.autopoll is not None:
                await up.forward(
                    "ChangeGroup.AutoPoll",
                    {"Id": rec.upstream_id, "Rate": rec.autopoll},
                    timeout=timeout,
                    conn=rec.conn,
                )
        elif isinstance(parsed, ChangeGroupAddComponentControlParams):
            comp = rec.components.setdefault(parsed.Component.Name, {})
            comp.update(dict.fromkeys(c.Name for c in parsed.Component.Controls))
            if was_empty and rec.autopoll is not None:
                await up.forward(
                    "ChangeGroup.AutoPoll",
                    {"Id": rec.upstream_id, "Rate": rec.autopoll},
                    timeout=timeout,
                    conn=rec.conn,
                )
        elif isinstance(parsed, ChangeGroupRemoveParams):
            for name in parsed.Controls:
                rec.named.pop(name, None)
        elif isinstance(parsed, ChangeGroupAutoPollParams):
            rec.autopoll = parsed.Rate
        elif method == "ChangeGroup.Clear":
            rec.clear()
        elif method == "ChangeGroup.Poll" and isinstance(result, dict):
            result = {**result, "Id": rec.client_id}
        return result

    @staticmethod
    def _answer_empty(rec: GroupRecord, method: str, parsed: Any) -> Any:
        """An empty group may not exist on the Core (QRC creates groups on the first add,
        and replay skips empty ones), so its calls are answered here."""
        if isinstance(parsed, ChangeGroupAutoPollParams):
            rec.autopoll = parsed.Rate  # sent to the Core with the next add
        if method == "ChangeGroup.Poll":
            return {"Id": rec.client_id, "Changes": []}
        return True

    def _new_group(self, gid: str | int) -> GroupRecord:
        up = self._upstream
        if len(self._groups) >= up.max_groups_per_session:
            raise QrcError(
                ErrorCode.CHANGE_GROUPS_EXHAUSTED,
                f"Change groups exhausted: at most {up.max_groups_per_session} per session",
            )
        if up.change_group_count >= up.max_change_groups:
            raise QrcError(
                ErrorCode.CHANGE_GROUPS_EXHAUSTED,
                f"Change groups exhausted: the gateway holds its maximum of {up.max_change_groups}",
            )
        rec = GroupRecord(
            client_id=gid,
            upstream_id=f"gw.s{self.id}.g{next(self._group_seq)}",
            push=self._deliver,
        )
        self._groups[str(gid)] = rec
        up.register_group(rec)
        return rec

    def _forget(self, rec: GroupRecord) -> None:
        if self._groups.get(str(rec.client_id)) is rec:
            del self._groups[str(rec.client_id)]
        self._upstream.unregister_group(rec)

    async def _ensure_placed(self, rec: GroupRecord) -> None:
        """Make sure the group exists on a live socket (re-creating it if its socket went away)."""
        if rec.placed:
            return
        up = self._upstream
        conn = up.pick(by_groups=True)
        if conn is None:
            raise CoreUnavailable("no connection to the Core", 1.0)
        if rec.empty:
            rec.conn = conn
            return
        try:
            await place(rec, conn, up.request_timeout)
        except (NotConnected, Busy, ConnectionClosed):
            raise CoreUnavailable("no connection to the Core", 1.0) from None
        except TimeoutError:
            raise CoreUnavailable("could not re-create the change group in time", 1.0) from None

    async def _destroy(self, rec: GroupRecord, timeout: float | None) -> None:
        try:
            if rec.placed:
                with contextlib.suppress(QrcError):
                    await self._upstream.forward(
                        "ChangeGroup.Destroy",
                        {"Id": rec.upstream_id},
                        timeout=timeout,
                        conn=rec.conn,
                    )
        finally:
            rec.conn = None
            self._forget(rec)

    def _deliver(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self._push(message)
        except Exception:
            log.exception("push to client session %d failed", self.id)

    async def close(self) -> None:
        """Destroy this session's groups on the Core (best effort: they die with the socket)."""
        if self.closed:
            return
        self.closed = True
        timeout = min(2.0, self._upstream.request_timeout)
        for rec in list(self._groups.values()):
            async with rec.lock:
                with contextlib.suppress(QrcError):
                    await self._destroy(rec, timeout)
        self._upstream.session_closed(self)
