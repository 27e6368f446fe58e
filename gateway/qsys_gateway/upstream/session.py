"""`UpstreamSession`: one client's view of the shared upstream. Its change groups live
in the gateway and are answered from the `SubscriptionHub` (docs/changegroups.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from pydantic import BaseModel

from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import ErrorCode, QrcError, unknown_change_group
from qsys_protocol.qrc.methods import (
    ChangeGroupAddComponentControlParams,
    ChangeGroupAddControlParams,
    ChangeGroupAutoPollParams,
    ChangeGroupRemoveParams,
    MethodTraits,
    parse_params,
    traits_of,
)

from .groups import ClientGroup, GroupLedger, ReadCheck
from .hub import Key, SubscriptionHub

log = logging.getLogger("qsys_gateway.upstream")

MIN_AUTOPOLL_SECONDS = 0.05
"""AutoPoll's floor: the hub learns the Core's changes no faster (`hub.POLL_INTERVAL`);
a smaller Rate is raised to it, as a Core answers `true` and polls at its own pace."""


Done = Callable[[Any, BaseException | None], None]
"""How a call sent without a task ends: (its result, None), or (None, the error the
client gets)."""


class PendingCall(Protocol):
    """A call sent without a task (`UpstreamSession.send`), until it ends."""

    def cancel(self) -> None: ...


class SessionOwner(Protocol):
    """What a session needs from the pool that opened it (`UpstreamPool`)."""

    @property
    def hub(self) -> SubscriptionHub: ...
    @property
    def groups(self) -> GroupLedger: ...
    def forward(
        self, method: str, params: Any, *, timeout: float | None = None, owner: str = ""
    ) -> Coroutine[Any, Any, Any]: ...
    def send(self, method: str, params: Any, owner: str, done: Done) -> PendingCall | None: ...
    def session_closed(self, session: UpstreamSession) -> None: ...


class UpstreamSession:
    """Created by `UpstreamPool.open_session`; close it when the client goes away.

    `can_read(component, control)`, when given, is asked on every poll and push so that
    values of controls the client may not (or may no longer) read never reach it."""

    def __init__(
        self,
        upstream: SessionOwner,
        sid: int,
        push: Callable[[dict[str, Any]], None],
        can_read: ReadCheck | None = None,
        owner: str = "",
    ) -> None:
        self._upstream = upstream
        self.id = sid
        self._push = push
        self.can_read = can_read
        self.owner = owner
        self._groups: dict[str, ClientGroup] = {}
        self._autopoll_task: asyncio.Task[None] | None = None
        self._autopoll_wake: asyncio.Event | None = None  # made by the first AutoPoll
        self.closed = False

    def call(
        self, method: str, params: Any, *, timeout: float | None = None
    ) -> Coroutine[Any, Any, Any]:
        """One call (await it at once): `params` is the model `parse_params` returned (raw
        JSON is validated here). Change-group methods are answered by the gateway, the rest
        go to the Core re-serialised from the model, so unknown fields never reach it."""
        if self.closed:
            raise QrcError(ErrorCode.INVALID_REQUEST, "Invalid request: session closed")
        traits = traits_of(method)
        if traits.change_group:
            return self._group(method, params, traits)
        forwarded = self._upstream.forward(method, _wire(params), timeout=timeout, owner=self.owner)
        return self._then_refresh(forwarded) if traits.write else forwarded

    def send(self, method: str, params: Any, done: Done) -> PendingCall | None:
        """`call` for a read, with no task waiting for it (`UpstreamPool.send`): its
        outcome goes to `done`. None when it cannot go so: nothing was taken, and `call`
        handles it (a write, a change-group method, a closed session, no connection)."""
        traits = traits_of(method)
        if self.closed or traits.write or traits.change_group:
            return None
        return self._upstream.send(method, _wire(params), self.owner, done)

    async def _then_refresh(self, forwarded: Coroutine[Any, Any, Any]) -> Any:
        """Set, then poll: a write is answered once the hub has polled the Core after it,
        so every group holding the control has it (docs/changegroups.md)."""
        result = await forwarded
        await self._upstream.hub.refresh()
        return result

    async def _group(self, method: str, params: Any, traits: MethodTraits) -> Any:
        parsed = params if isinstance(params, BaseModel) else parse_params(method, params)
        assert parsed is not None
        gid = getattr(parsed, "Id", None)
        assert isinstance(gid, str | int)
        while True:
            group = self._groups.get(str(gid))
            created = False
            if group is None:
                if not traits.group_add:
                    raise unknown_change_group(gid)
                group, created = self._new_group(gid), True
            async with group.lock:
                if self._groups.get(str(gid)) is not group:
                    continue  # destroyed (or its failed creation undone) while we waited
                try:
                    return await self._group_call(group, method, parsed)
                finally:
                    if created and not group.delivered:
                        self._forget(group)

    async def _group_call(self, group: ClientGroup, method: str, parsed: Any) -> Any:
        hub = self._upstream.hub
        if isinstance(parsed, ChangeGroupAddControlParams | ChangeGroupAddComponentControlParams):
            if isinstance(parsed, ChangeGroupAddControlParams):
                keys: list[Key] = [("", n) for n in parsed.Controls]
            else:
                comp = parsed.Component
                keys = [(comp.Name, c.Name) for c in comp.Controls]
            new = [k for k in dict.fromkeys(keys) if k not in group.delivered]
            if new:
                await hub.subscribe(new, self.owner)
                for k in new:
                    group.delivered[k] = -1
                group.seen = -1
            return True
        if isinstance(parsed, ChangeGroupRemoveParams):
            gone = [("", n) for n in dict.fromkeys(parsed.Controls) if ("", n) in group.delivered]
            for k in gone:
                del group.delivered[k]
            await hub.release(gone, self.owner)
            return True
        if isinstance(parsed, ChangeGroupAutoPollParams):
            group.autopoll = max(MIN_AUTOPOLL_SECONDS, parsed.Rate)
            group.next_push = 0.0
            self._start_autopoll()
            return True
        if method == "ChangeGroup.Poll":
            return {"Id": group.client_id, "Changes": group.poll(hub, self.can_read)}
        if method == "ChangeGroup.Invalidate":
            group.invalidate()
            return True
        if method == "ChangeGroup.Clear":
            keys = list(group.delivered)
            group.delivered.clear()
            await hub.release(keys, self.owner)
            return True
        if method == "ChangeGroup.Destroy":
            await self._destroy(group)
            return True
        raise QrcError(ErrorCode.METHOD_NOT_FOUND, f"Method not found: {method[:64]}")

    def _start_autopoll(self) -> None:
        if self._autopoll_wake is None:
            self._autopoll_wake = asyncio.Event()
        self._autopoll_wake.set()
        if self._autopoll_task is None or self._autopoll_task.done():
            self._autopoll_task = asyncio.get_running_loop().create_task(
                self._autopoll(self._autopoll_wake), name=f"qsys-autopoll-{self.id}"
            )

    async def _autopoll(self, wake: asyncio.Event) -> None:
        """One loop per session pushes every AutoPoll group's changes when it is due.

        It wakes at most every MIN_AUTOPOLL_SECONDS and, when the hub has nothing new
        since its last pass, does nothing else: the cost does not grow with the number
        of groups."""
        hub = self._upstream.hub
        loop = asyncio.get_running_loop()
        seen = -1
        while not self.closed:
            due = [g for g in self._groups.values() if g.autopoll is not None]
            if not due:
                wake.clear()
                await wake.wait()
                continue
            now = loop.time()
            if hub.version != seen or any(g.seen == -1 for g in due):
                seen = hub.version
                for group in due:
                    if now < group.next_push:
                        seen = -1  # not due yet: look again on the next pass
                        continue
                    assert group.autopoll is not None
                    group.next_push = now + group.autopoll
                    changes = group.poll(hub, self.can_read)
                    if changes:
                        self._deliver(
                            jsonrpc.notification_message(
                                "ChangeGroup.Poll", {"Id": group.client_id, "Changes": changes}
                            )
                        )
            due_at = min(g.next_push for g in due)
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(MIN_AUTOPOLL_SECONDS, due_at - loop.time())):
                    await wake.wait()

    def stop_autopoll(self) -> None:
        task, self._autopoll_task = self._autopoll_task, None
        if task is not None:
            task.cancel()

    def _new_group(self, gid: str | int) -> ClientGroup:
        group = self._upstream.groups.create(gid, len(self._groups), self.owner)
        self._groups[str(gid)] = group
        return group

    def _forget(self, group: ClientGroup) -> None:
        group.stop_autopoll()
        if self._groups.get(str(group.client_id)) is group:
            del self._groups[str(group.client_id)]
        self._upstream.groups.discard(group)

    async def _destroy(self, group: ClientGroup) -> None:
        keys = list(group.delivered)
        group.delivered.clear()
        self._forget(group)
        await self._upstream.hub.release(keys, self.owner)

    def _deliver(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self._push(message)
        except Exception:
            log.exception("push to client session %d failed", self.id)

    def halt(self) -> None:
        """Stop at once (gateway shutdown): no more calls, pushes or AutoPolls."""
        self.closed = True
        self.stop_autopoll()

    async def close(self) -> None:
        """Drop this session's groups (and their references in the hub)."""
        if self.closed:
            return
        self.closed = True
        self.stop_autopoll()
        for group in list(self._groups.values()):
            async with group.lock:
                with contextlib.suppress(QrcError):
                    await self._destroy(group)
        self._upstream.session_closed(self)


def _wire(params: Any) -> Any:
    """Params as the Core gets them: a model re-serialised (model_dump's own work, without
    its Python wrapper), so unknown fields never reach it; raw JSON as it is."""
    if isinstance(params, BaseModel):
        return type(params).__pydantic_serializer__.to_python(
            params, mode="json", exclude_none=True
        )
    return params
