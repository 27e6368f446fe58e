"""MCP resources: one per component (`qsys://component/<name>`), read and subscribed
to through admission like a tool call; a subscriber's changes come from its own
gateway change group, which the hub feeds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import mcp_types as types
import orjson
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated
from mcp.shared.exceptions import MCPError

from qsys_protocol.qrc.errors import ErrorCode, QrcError

from .admission import Caller, McpAdmission, Refusal
from .context import Ctx
from .design import readable
from .refusals import protocol_error
from .tools import MAX_PAGE, URI_PREFIX, GetArgs, read_component, uri_of

log = logging.getLogger("qsys_gateway.mcp")

SESSION_HEADER = "mcp-session-id"
GROUP_ID = "mcp"
MAX_SUBSCRIPTIONS = 256
"""Components one MCP session may subscribe to."""
SUBSCRIPTION_POLL = 0.2
"""Seconds between checks of a session's subscribed controls (the hub's cache, not the Core)."""

Context = ServerRequestContext[Any, Any]
Notify = Callable[[str], Awaitable[None]]


def component_of(uri: str) -> str:
    if not uri.startswith(URI_PREFIX) or len(uri) > 1024:
        raise MCPError(ErrorCode.INVALID_PARAMS, f"Unknown resource; expected {URI_PREFIX}<name>")
    name = unquote(uri[len(URI_PREFIX) :])
    if not name or len(name) > 256:
        raise MCPError(ErrorCode.INVALID_PARAMS, "Invalid component name in resource URI")
    return name


def session_id(ctx: Context) -> str | None:
    headers = getattr(ctx.request, "headers", None)
    sid = headers.get(SESSION_HEADER) if headers is not None else None
    return sid if isinstance(sid, str) else None


def _cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit() or len(cursor) > 9:
        raise MCPError(ErrorCode.INVALID_PARAMS, "Invalid cursor")
    return int(cursor)


@dataclass(eq=False)
class Subscriptions:
    """Resource subscriptions of one subscriber: one gateway change group, fed by the hub."""

    subscriber: Caller
    notify: Notify
    uris: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)
    autopoll: bool = False


class Resources:
    """The resource handlers, and the subscriptions of each MCP session."""

    def __init__(self, admission: McpAdmission, context: Callable[[Context], Ctx]) -> None:
        self._admission = admission
        self._context = context
        self._sessions: dict[str, Subscriptions] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def drop(self, sid: str) -> None:
        """A session ended: its subscriptions with it."""
        subs = self._sessions.pop(sid, None)
        if subs is not None:
            await self._release(subs)

    async def close(self) -> None:
        for sid in list(self._sessions):
            await self.drop(sid)

    async def list(
        self, rctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        ctx = self._context(rctx)
        subject = ctx.admission.current(ctx.caller).name
        names = sorted(
            c.Name for c in await _components(ctx) if ctx.policy.component_readable(subject, c.Name)
        )
        start = _cursor(params.cursor if params else None)
        page = names[start : start + MAX_PAGE]
        nxt = str(start + MAX_PAGE) if start + MAX_PAGE < len(names) else None
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    name=n,
                    uri=uri_of(n),
                    mime_type="application/json",
                    description=f"Controls of {n} you may read (subscribe for changes)",
                )
                for n in page
            ],
            next_cursor=nxt,
        )

    async def templates(
        self, rctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        self._context(rctx)
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    name="component",
                    uri_template=URI_PREFIX + "{name}",
                    mime_type="application/json",
                    description="A component's controls you may read; name URL-encoded",
                )
            ]
        )

    async def read(
        self, rctx: Context, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        ctx = self._context(rctx)
        uri = str(params.uri)
        component = component_of(uri)
        args = GetArgs(component=component)
        try:
            controls = await ctx.admission.invoke(
                ctx.caller, "Component.Get", {"Name": component}, lambda: read_component(ctx, args)
            )
        except Refusal as err:
            raise protocol_error(err, "Component.Get", component) from None
        text = orjson.dumps({"component": component, "controls": controls}).decode()
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
        )

    async def subscribe(
        self, rctx: Context, params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        """Handshake-era subscription: lives as long as the MCP session."""
        ctx = self._context(rctx)
        sid = session_id(rctx)
        if sid is None:
            raise MCPError(
                ErrorCode.INVALID_REQUEST, "Subscriptions need a session: initialize first"
            )
        subs = self._sessions.get(sid)
        if subs is None:
            subs = self._sessions[sid] = self._subscriber(ctx, rctx.session.send_resource_updated)
        await self._watch(ctx, subs, str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(
        self, rctx: Context, params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        self._context(rctx)
        sid = session_id(rctx)
        subs = self._sessions.get(sid) if sid is not None else None
        if subs is not None:
            uri = str(params.uri)
            subs.uris.discard(uri)
            subs.pending.discard(uri)
        return types.EmptyResult()

    async def listen(
        self, rctx: Context, params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """2026-07-28 `subscriptions/listen`: the subscription lives as long as this stream."""
        ctx = self._context(rctx)
        uris = list(dict.fromkeys(params.notifications.resource_subscriptions or []))
        if len(uris) > MAX_SUBSCRIPTIONS:
            raise MCPError(
                ErrorCode.INVALID_PARAMS, f"At most {MAX_SUBSCRIPTIONS} resources per stream"
            )
        bus = InMemorySubscriptionBus()

        async def publish(uri: str) -> None:
            await bus.publish(ResourceUpdated(uri))

        subs = self._subscriber(ctx, publish)
        try:
            for uri in uris:
                await self._watch(ctx, subs, uri)
            return await ListenHandler(bus, max_subscriptions=1, max_buffered_events=256)(
                rctx, params
            )
        finally:
            await self._release(subs)

    async def _release(self, subs: Subscriptions) -> None:
        await self._admission.release(subs.subscriber)

    def _subscriber(self, ctx: Ctx, notify: Notify) -> Subscriptions:
        """A gateway change group for one subscriber, pushing under the current policy."""
        holder: list[Subscriptions] = []
        subscriber = ctx.admission.subscriber(
            ctx.caller, lambda msg: self._changed(holder[0], msg) if holder else None
        )
        holder.append(Subscriptions(subscriber, notify))
        return holder[0]

    async def _watch(self, ctx: Ctx, subs: Subscriptions, uri: str) -> None:
        """Add a component's readable controls to the subscriber's change group through
        admission (a request of its own: rate limit, policy, audit); the hub shares
        them with every other subscriber."""
        component = component_of(uri)
        if uri in subs.uris:
            return
        if len(subs.uris) >= MAX_SUBSCRIPTIONS:
            raise MCPError(
                ErrorCode.INVALID_REQUEST,
                f"At most {MAX_SUBSCRIPTIONS} subscriptions per session; unsubscribe first",
            )
        policy, subject = ctx.policy, ctx.subject

        async def add() -> None:
            names = ["*"]  # policy first: refused alike whether or not the component exists
            if policy.component_readable(subject, component):
                specs = await ctx.controls(component)
                names = [c.name for c in readable(policy, subject, component, specs)] or ["*"]
            await ctx.call(
                "ChangeGroup.AddComponentControl",
                {
                    "Id": GROUP_ID,
                    "Component": {"Name": component, "Controls": [{"Name": n} for n in names]},
                },
                subscriber=subs.subscriber,
            )
            session = subs.subscriber.session
            if not subs.autopoll and session is not None:
                # gateway plumbing, not a Core call: the hub already polls the Core
                await session.call(
                    "ChangeGroup.AutoPoll", {"Id": GROUP_ID, "Rate": SUBSCRIPTION_POLL}
                )
                subs.autopoll = True

        try:
            await ctx.admission.invoke(
                ctx.caller, "ChangeGroup.AddComponentControl", {"Id": GROUP_ID}, add
            )
        except Refusal as err:
            raise protocol_error(err, "ChangeGroup.AddComponentControl", component) from None
        except QrcError as exc:
            raise MCPError(exc.code, exc.message) from None
        subs.uris.add(uri)

    def _changed(self, subs: Subscriptions, message: dict[str, Any]) -> None:
        """An AutoPoll push of the subscriber's change group: one notification per changed
        resource until it is sent."""
        params = message.get("params")
        changes = params.get("Changes") if isinstance(params, dict) else None
        if not isinstance(changes, list):
            return
        for change in changes:
            component = change.get("Component") if isinstance(change, dict) else None
            if not isinstance(component, str):
                continue
            uri = uri_of(component)
            if uri in subs.uris and uri not in subs.pending:
                subs.pending.add(uri)
                task = asyncio.get_running_loop().create_task(self._notify(subs, uri))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _notify(self, subs: Subscriptions, uri: str) -> None:
        try:
            await subs.notify(uri)
        except Exception as exc:
            log.info("could not notify an MCP client of %s: %s", uri, type(exc).__name__)
        finally:
            subs.pending.discard(uri)


async def _components(ctx: Ctx) -> list[Any]:
    try:
        return await ctx.components()
    except Refusal as err:
        raise protocol_error(err, "Component.GetComponents") from None
