"""`/v1/mcp`: the gateway as an MCP server (Streamable HTTP, official MCP SDK).

Authentication, per-subject bounds and the body limit are applied here before the SDK
sees a byte; every tool call and resource read then goes through `Admission` (rate
limit, policy, audit, metrics, upstream pool). Design: docs/mcp.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Annotated, Any
from urllib.parse import quote, unquote

import mcp_types as types
import orjson
from aiohttp import web
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import ErrorCode, QrcError

from .. import __version__
from ..admission import Caller
from ..transports.common import HTTP_STATUS, Services, request_id
from ..transports.responses import bearer, source_ip
from . import tools as T
from .admission import McpAdmission, McpCaller, Refusal, outcome_of
from .bridge import serve
from .design import ControlSpec, Design, Fetch, Writable, readable, writable
from .sessions import SessionTable, opens_session, request_ids

log = logging.getLogger("qsys_gateway.mcp")

URI_PREFIX = "qsys://component/"
SESSION_HEADER = "mcp-session-id"
CALLER_KEY = "qsys.caller"
GROUP_ID = "mcp"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The SDK's own body limit: the largest `limits.maxMessageBytes` a config may set."""
EXPOSED = "Mcp-Session-Id, X-Request-ID, Retry-After, WWW-Authenticate"
MAX_SUBSCRIPTIONS = 256
"""Components one MCP session may subscribe to."""
SUBSCRIPTION_POLL = 0.2
"""Seconds between checks of a session's subscribed controls (the hub's cache, not the Core)."""
REAP_INTERVAL = 30.0

INSTRUCTIONS = (
    "Controls a Q-SYS audio/video system through an access-controlled gateway. "
    "Find components with list_components, read them with get_component, change them "
    "with set_controls. You only see what your token may read or write."
)


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


Name = Annotated[StrictStr, Field(min_length=1, max_length=256)]
Value = StrictBool | StrictInt | StrictFloat | Annotated[StrictStr, Field(max_length=4096)]


class StatusArgs(_Args):
    pass


class ListArgs(_Args):
    filter: Annotated[StrictStr, Field(max_length=256)] | None = None
    offset: Annotated[StrictInt, Field(ge=0, le=1_000_000)] = 0
    limit: Annotated[StrictInt, Field(ge=1, le=T.MAX_PAGE)] = T.PAGE


class GetArgs(_Args):
    component: Name
    controls: Annotated[list[Name], Field(max_length=1024)] | None = None


class SetArgs(_Args):
    component: Name
    values: Annotated[dict[Name, Value], Field(min_length=1, max_length=1024)]
    ramp: Annotated[float, Field(ge=0, le=3600)] | None = None


class SnapshotArgs(_Args):
    name: Name
    bank: Annotated[StrictInt, Field(ge=1, le=1000)]
    ramp: Annotated[float, Field(ge=0, le=3600)] | None = None


ARGS: dict[str, type[_Args]] = {
    T.STATUS: StatusArgs,
    T.LIST: ListArgs,
    T.GET: GetArgs,
    T.SET: SetArgs,
    T.SNAPSHOT: SnapshotArgs,
}
_REQUIRED_METHOD = {
    T.STATUS: "StatusGet",
    T.LIST: "Component.Get",
    T.GET: "Component.Get",
    T.SET: "Component.Set",
    T.SNAPSHOT: "Snapshot.Load",
}


def invalid(message: str, kind: str) -> Refusal:
    """Arguments an agent can fix: an `isError` tool result, the message as written."""
    return Refusal(ErrorCode.INVALID_PARAMS, message, kind=kind)


def uri_of(component: str) -> str:
    return URI_PREFIX + quote(component, safe="")


def component_of(uri: str) -> str:
    if not uri.startswith(URI_PREFIX) or len(uri) > 1024:
        raise MCPError(ErrorCode.INVALID_PARAMS, f"Unknown resource; expected {URI_PREFIX}<name>")
    name = unquote(uri[len(URI_PREFIX) :])
    if not name or len(name) > 256:
        raise MCPError(ErrorCode.INVALID_PARAMS, "Invalid component name in resource URI")
    return name


def _rule_hint(method: str, component: str, controls: list[str]) -> str:
    ctl = ", ".join(controls[:8]) or "*"
    return (
        f" Ask an operator for an AccessPolicy rule with methods [{method}], "
        f"components [{component}], controls [{ctl}]."
    )


def explain(
    err: Refusal, method: str, component: str = "", controls: list[str] | None = None
) -> str:
    code, message = err.code, err.message
    if err.kind is not None:
        return message
    if code == ErrorCode.FORBIDDEN:
        return f"Refusal: {message.removeprefix('Forbidden by policy: ')}." + _rule_hint(
            method, component, controls or []
        )
    if code == ErrorCode.RATE_LIMITED:
        return f"Rate limited: retry in {max(0.001, err.retry_after):.3g} s."
    if code == ErrorCode.UNKNOWN_COMPONENT:
        return f"Unknown component {component!r}; use {T.LIST} to find names."
    if code == ErrorCode.UNKNOWN_CONTROL:
        return f"Unknown control of {component!r}; use {T.GET} to see its controls."
    if code in (ErrorCode.CORE_UNAVAILABLE, ErrorCode.CORE_TIMEOUT):
        return f"{message}; retry in a few seconds."
    return message


Notify = Callable[[str], Awaitable[None]]


@dataclass(eq=False)
class _SessionState:
    """Resource subscriptions of one subscriber: one gateway change group, fed by the hub."""

    subscriber: Caller
    notify: Notify
    uris: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)
    autopoll: bool = False


class McpEndpoint:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.admission = McpAdmission(svc)
        self.design = Design(svc.runtime.upstream)
        cfg = svc.runtime.config
        self.server: Server[Any] = Server(
            "qsys-gateway",
            version=__version__,
            instructions=INSTRUCTIONS,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_templates,
            on_read_resource=self._read_resource,
            on_subscribe_resource=self._subscribe,
            on_unsubscribe_resource=self._unsubscribe,
            on_subscriptions_listen=self._listen,
        )
        self.manager = StreamableHTTPSessionManager(
            self.server,
            json_response=True,
            session_idle_timeout=cfg.mcp.sessionIdleSeconds,
            # the gateway applies the (reloadable) maxMessageBytes before the SDK runs
            max_request_body_size=MAX_MESSAGE_BYTES,
            max_sessions=cfg.limits.maxClients,
        )
        self.sessions = SessionTable()
        self._streams: dict[str, int] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._states: dict[str, _SessionState] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None

    # ---- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        started = asyncio.Event()

        async def run() -> None:
            async with self.manager.run():
                started.set()
                await self._stop.wait()

        loop = asyncio.get_running_loop()
        self._runner = loop.create_task(run(), name="qsys-mcp")
        waiter = loop.create_task(started.wait())
        await asyncio.wait({self._runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not started.is_set():
            waiter.cancel()
            self._runner.result()  # the SDK's start-up error
            raise RuntimeError("the MCP session manager stopped at start-up")
        self._reaper = loop.create_task(self._reap(), name="qsys-mcp-reaper")

    async def stop(self) -> None:
        """End every session and cancel every MCP request still in flight, so shutdown
        never waits on what a client left open (a stream, a request the SDK never
        answers)."""
        self._stop.set()
        if self._reaper is not None:
            self._reaper.cancel()
        current = asyncio.current_task()
        for task in list(self._handlers):
            if task is not current:
                task.cancel()
        for session in self.sessions.all():
            await self._end(session.sid)
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._runner, 5.0)
        for sid in list(self._states):
            await self._drop_state(sid)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            await self._prune()

    async def _prune(self) -> None:
        for sid in self.sessions.idle(self.svc.runtime.config.mcp.sessionIdleSeconds):
            await self._end(sid)

    async def _end(self, sid: str) -> None:
        """End a session: the SDK's (as a client DELETE would), its open streams, its
        subscriptions and its entry in the table."""
        session = self.sessions.drop(sid)
        if session is None:
            return
        self.svc.admission.unwatch(session.caller)
        current = asyncio.current_task()
        for task in list(session.tasks):
            if task is not current:
                task.cancel()
        await self._terminate(sid, session.subject)
        await self._drop_state(sid)

    async def _terminate(self, sid: str, subject: str) -> None:
        """A DELETE of the session through the SDK's public entry (404 once it is gone)."""
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "DELETE",
            "scheme": "http",
            "path": "/v1/mcp",
            "raw_path": b"/v1/mcp",
            "query_string": b"",
            "root_path": "",
            "headers": [(SESSION_HEADER.encode(), sid.encode())],
            "client": None,
            "server": None,
            "state": {},
            "user": _user(subject),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            return None

        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.manager.handle_request(scope, receive, send), 5.0)

    async def _drop_state(self, sid: str) -> None:
        state = self._states.pop(sid, None)
        if state is not None:
            await self.admission.release(state.subscriber)

    # ---- HTTP -------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rt = self.svc.runtime
        cfg = rt.config
        rid: str = request.get("request_id") or request_id(request.headers.get("X-Request-ID"))
        if rt.shutting_down:
            return _error(QrcError(ErrorCode.CORE_UNAVAILABLE, "Gateway is shutting down"), 503)
        if request.method not in ("GET", "POST", "DELETE"):
            return _error(
                QrcError(ErrorCode.INVALID_REQUEST, "Method not allowed"),
                405,
                {"Allow": "GET, POST, DELETE"},
            )
        source = source_ip(request)
        try:
            caller = await self.admission.authenticate(bearer(request), source, rid)
        except Refusal as err:
            return _error(err, retry_after=err.retry_after)
        limit = cfg.limits.maxMessageBytes
        body = b""
        if request.method == "POST":
            if request.content_length is not None and request.content_length > limit:
                return _error(_too_large(limit), 413)
            body = await request.content.read(limit + 1)
            if len(body) > limit:
                return _error(_too_large(limit), 413)
        name = caller.subject.name
        if self._streams.get(name, 0) >= cfg.mcp.maxStreamsPerSubject:
            return _error(
                QrcError(
                    ErrorCode.RATE_LIMITED,
                    f"Too many concurrent MCP requests for this subject "
                    f"(at most {cfg.mcp.maxStreamsPerSubject})",
                ),
                retry_after=1.0,
            )
        sid = request.headers.get(SESSION_HEADER)
        session = self.sessions.get(sid) if sid is not None else None
        cap = cfg.mcp.maxSessionsPerSubject
        if request.method == "POST" and sid is None and opens_session(body):
            await self._prune()
            if self.sessions.count(name) >= cap:
                return _too_many_sessions(cap)
        ids: list[str] = []
        if request.method == "POST" and session is not None:
            ids = request_ids(body) or []
            if len(set(ids)) < len(ids) or session.ids.intersection(ids):
                return _error(
                    QrcError(
                        ErrorCode.INVALID_REQUEST,
                        "Invalid request: a request with this id is already in flight on "
                        "this session",
                    ),
                    409,
                )
        headers = {
            "X-Request-ID": rid,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        }
        origin = request.headers.get("Origin")
        if origin is not None:  # the middleware refused origins outside cors.allowedOrigins
            headers["Access-Control-Allow-Origin"] = origin
            headers["Vary"] = "Origin"
            headers["Access-Control-Expose-Headers"] = EXPOSED
        task = asyncio.current_task()
        assert task is not None
        admission = self.svc.admission
        if session is not None:
            session.use(caller.caller)
            session.ids.update(ids)
            session.tasks.add(task)
        self._handlers.add(task)
        self._streams[name] = self._streams.get(name, 0) + 1
        # the request's own token is checked once a second while it runs (open streams)
        admission.watch(caller.caller, lambda: self._cancel(task))
        try:
            response = await serve(
                self.manager.handle_request,
                request,
                body,
                {"user": _user(name), CALLER_KEY: caller},
                headers,
            )
        finally:
            admission.unwatch(caller.caller)
            self._handlers.discard(task)
            left = self._streams[name] - 1
            if left:
                self._streams[name] = left
            else:
                del self._streams[name]
            if session is not None:
                session.ids.difference_update(ids)
                session.tasks.discard(task)
                session.last_active = time.monotonic()
        new_sid = response.headers.get(SESSION_HEADER)
        if new_sid and self.sessions.get(new_sid) is None and response.status < 400:
            if self.sessions.count(name) >= cap:
                # opened by a body the check above did not see as an initialize
                self.sessions.add(new_sid, caller.caller)
                await self._end(new_sid)
                return _too_many_sessions(cap)
            opened = self.sessions.add(new_sid, caller.caller)
            admission.watch(opened.caller, lambda: self._end(new_sid))
        if request.method == "DELETE" and sid is not None and response.status < 400:
            await self._end(sid)
        return response

    async def _cancel(self, task: asyncio.Task[Any]) -> None:
        task.cancel()

    # ---- handlers ---------------------------------------------------------------------

    def _caller(self, ctx: ServerRequestContext[Any, Any]) -> McpCaller:
        request = ctx.request
        scope = getattr(request, "scope", None)
        caller = scope.get(CALLER_KEY) if isinstance(scope, dict) else None
        if not isinstance(caller, McpCaller):
            raise MCPError(ErrorCode.INVALID_REQUEST, "No authenticated HTTP request")
        return caller

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        caller = self._caller(ctx)
        subject = self.admission.current(caller)
        policy = self.admission.policy
        writes: list[tuple[str, Writable]] = []
        if policy.has_rule_for(subject.name, "Component.Set"):
            for comp in await self._design_components(caller):
                if len(writes) > T.MAX_SCHEMA_COMPONENTS:
                    break
                if not policy.component_writable(subject.name, comp):
                    continue
                try:
                    specs = await self._controls(caller, comp)
                except Refusal:
                    continue  # gone from the design since it was listed
                allowed = writable(policy, subject.name, comp, specs)
                if allowed:
                    writes.append((comp, allowed))
        return types.ListToolsResult(tools=T.tools_for(policy, subject, writes))

    async def _design_components(self, caller: McpCaller) -> list[str]:
        try:
            components = await self.design.components(self._fetch(caller))
        except Refusal as err:
            raise MCPError(_mcp_code(err), explain(err, "Component.GetComponents")) from None
        return sorted(c.Name for c in components)

    def _fetch(self, caller: McpCaller) -> Fetch:
        return lambda method, params: self.admission.design(caller, method, params)

    async def _controls(self, caller: McpCaller, component: str) -> dict[str, ControlSpec]:
        return await self.design.controls(component, self._fetch(caller))

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller = self._caller(ctx)
        name = params.name
        model = ARGS.get(name)
        subject = self.admission.current(caller)
        if model is None or not self.admission.policy.has_rule_for(
            subject.name, _REQUIRED_METHOD[name]
        ):
            raise MCPError(ErrorCode.INVALID_PARAMS, f"Unknown tool {name[:64]!r}; call tools/list")
        try:
            args = model.model_validate(params.arguments or {})
        except PydanticValidationError as exc:
            return _tool_error(_describe(exc), error="invalid_arguments")
        try:
            result = await self.admission.invoke(
                caller,
                _REQUIRED_METHOD[name],
                params.arguments,
                lambda: self._run_tool(caller, args),
                _weight(args),
            )
        except Refusal as err:
            if err.kind is not None:
                return _tool_error(err.message, error=err.kind)
            component = getattr(args, "component", "") or getattr(args, "name", "")
            controls = list(getattr(args, "values", {}) or getattr(args, "controls", []) or [])
            return _tool_error(
                explain(err, _REQUIRED_METHOD[name], component, controls),
                error=outcome_of(err.code),
                **({"retryAfterSeconds": round(err.retry_after, 3)} if err.retry_after else {}),
            )
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=orjson.dumps(result).decode())],
            structured_content=result,
        )

    async def _run_tool(self, caller: McpCaller, args: _Args) -> dict[str, Any]:
        if isinstance(args, StatusArgs):
            status = await self.admission.call(caller, "StatusGet", None)
            up = self.svc.runtime.upstream
            return {"core": status, "gatewayReachesCore": up.up}
        if isinstance(args, ListArgs):
            return await self._list(caller, args)
        if isinstance(args, GetArgs):
            return {"component": args.component, "controls": await self._read(caller, args)}
        if isinstance(args, SetArgs):
            return await self._set(caller, args)
        assert isinstance(args, SnapshotArgs)
        p: dict[str, Any] = {"Name": args.name, "Bank": args.bank}
        if args.ramp is not None:
            p["Ramp"] = args.ramp
        await self.admission.call(caller, "Snapshot.Load", p)
        return {"loaded": args.name, "bank": args.bank}

    async def _list(self, caller: McpCaller, args: ListArgs) -> dict[str, Any]:
        policy = self.admission.policy
        subject = caller.subject.name
        components = await self.design.components(self._fetch(caller))
        pattern = (args.filter or "").lower()
        glob = any(ch in pattern for ch in "*?[")
        names = sorted(
            (c for c in components if policy.component_readable(subject, c.Name)),
            key=lambda c: c.Name,
        )
        if pattern:
            names = [
                c
                for c in names
                if (fnmatchcase(c.Name.lower(), pattern) if glob else pattern in c.Name.lower())
            ]
        page = names[args.offset : args.offset + args.limit]
        self.admission.count(caller, "Component.GetComponents", "ok")
        out: dict[str, Any] = {
            "total": len(names),
            "components": [{"name": c.Name, "type": c.Type, "uri": uri_of(c.Name)} for c in page],
        }
        if args.offset + args.limit < len(names):
            out["nextOffset"] = args.offset + args.limit
        return out

    async def _read(self, caller: McpCaller, args: GetArgs) -> dict[str, Any]:
        """The readable controls of a component, with type, range and writability."""
        policy = self.admission.policy
        subject = caller.subject.name
        wanted = list(dict.fromkeys(args.controls or []))
        hidden = [c for c in wanted if not policy.can_read(subject, args.component, c)]
        if hidden or not policy.component_readable(subject, args.component):
            # policy first: the same refusal whether or not the component or control exists
            ref = [{"Name": c} for c in hidden or wanted or ["*"]]
            await self.admission.call(
                caller, "Component.Get", {"Name": args.component, "Controls": ref}
            )
        specs = await self._controls(caller, args.component)
        unknown = [c for c in wanted if c not in specs]
        if unknown:
            raise invalid(
                f"Unknown control(s) {', '.join(unknown[:8])} of {args.component!r}; "
                f"omit 'controls' to see all you may read.",
                "unknown_control",
            )
        chosen = (
            [specs[c] for c in wanted]
            if wanted
            else readable(policy, subject, args.component, specs)
        )
        if not chosen:
            chosen = [s for s in specs.values() if s.readable][:1]
        result = await self.admission.call(
            caller,
            "Component.Get",
            {"Name": args.component, "Controls": [{"Name": c.name} for c in chosen]},
        )
        values = {
            c.get("Name"): c for c in (result or {}).get("Controls", []) if isinstance(c, dict)
        }
        ranges = {
            c.name: (low, high) for c, low, high in writable(policy, subject, args.component, specs)
        }
        out: dict[str, Any] = {}
        for c in chosen:
            v = values.get(c.name, {})
            entry: dict[str, Any] = {
                "value": v.get("Value"),
                "string": v.get("String"),
                "position": v.get("Position"),
                "type": c.type,
            }
            if c.units:
                entry["units"] = c.units
            if c.low is not None:
                entry["coreRange"] = [c.low, c.high]
            if c.name in ranges:
                low, high = ranges[c.name]
                entry["writable"] = True
                if c.type in ("Float", "Integer", "Time") and (low is not None or high is not None):
                    entry["allowedRange"] = [low, high]
            else:
                entry["writable"] = False
            out[c.name] = entry
        return out

    async def _set(self, caller: McpCaller, args: SetArgs) -> dict[str, Any]:
        policy, subject = self.admission.policy, caller.subject.name
        if not all(policy.write_range(subject, args.component, n)[0] for n in args.values):
            # policy first: refused as /v1/rpc refuses it, before the design is looked at,
            # so nothing tells whether the component or its controls exist
            writes = [{"Name": n, "Value": v} for n, v in args.values.items()]
            await self.admission.call(
                caller, "Component.Set", {"Name": args.component, "Controls": writes}
            )
        specs = await self._controls(caller, args.component)
        controls: list[dict[str, Any]] = []
        for name, value in args.values.items():
            spec = specs.get(name)
            if spec is None:
                raise invalid(
                    f"Unknown control {name!r} of {args.component!r}; see {T.GET}.",
                    "unknown_control",
                )
            problem = _type_problem(spec, value)
            if problem:
                raise invalid(f"{name}: {problem}", "invalid_arguments")
            write: dict[str, Any] = {"Name": name, "Value": value}
            if args.ramp is not None and spec.type in ("Float", "Integer"):
                write["Ramp"] = args.ramp
            controls.append(write)
        try:
            await self.admission.call(
                caller, "Component.Set", {"Name": args.component, "Controls": controls}
            )
        except Refusal as err:
            if err.code == ErrorCode.FORBIDDEN:
                raise Refusal(err.code, self._range_reason(caller, args, specs, err)) from None
            raise
        return {"component": args.component, "set": args.values}

    def _range_reason(
        self, caller: McpCaller, args: SetArgs, specs: dict[str, ControlSpec], err: Refusal
    ) -> str:
        """Name the allowed range when a value, not a missing rule, was the reason."""
        policy = self.admission.policy
        for c, low, high in writable(policy, caller.subject.name, args.component, specs):
            value = args.values.get(c.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if (low is not None and value < low) or (high is not None and value > high):
                unit = f" {c.units}" if c.units else ""
                return (
                    f"{args.component}.{c.name} = {value}{unit} is outside your allowed range "
                    f"{T._num(low)}..{T._num(high)}{unit}"
                )
        return err.message

    # ---- resources ----------------------------------------------------------------------

    async def _list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        caller = self._caller(ctx)
        subject = self.admission.current(caller).name
        policy = self.admission.policy
        names = [
            n
            for n in await self._design_components(caller)
            if policy.component_readable(subject, n)
        ]
        start = _cursor(params.cursor if params else None)
        page = names[start : start + T.MAX_PAGE]
        nxt = str(start + T.MAX_PAGE) if start + T.MAX_PAGE < len(names) else None
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

    async def _list_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        self._caller(ctx)
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

    async def _read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        caller = self._caller(ctx)
        uri = str(params.uri)
        component = component_of(uri)
        try:
            controls = await self.admission.invoke(
                caller,
                "Component.Get",
                {"Name": component},
                lambda: self._read(caller, GetArgs(component=component)),
            )
        except Refusal as err:
            raise MCPError(
                _mcp_code(err), explain(err, "Component.Get", component), _retry(err)
            ) from None
        text = orjson.dumps({"component": component, "controls": controls}).decode()
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
        )

    async def _subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        """Handshake-era subscription: lives as long as the MCP session."""
        caller = self._caller(ctx)
        uri = str(params.uri)
        sid = _session_id(ctx)
        if sid is None:
            raise MCPError(
                ErrorCode.INVALID_REQUEST, "Subscriptions need a session: initialize first"
            )
        state = self._states.get(sid)
        if state is None:
            session = ctx.session
            state = self._states[sid] = self._watcher(caller, session.send_resource_updated)
        await self._watch(caller, state, uri)
        return types.EmptyResult()

    async def _unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        self._caller(ctx)
        sid = _session_id(ctx)
        state = self._states.get(sid) if sid is not None else None
        if state is not None:
            uri = str(params.uri)
            state.uris.discard(uri)
            state.pending.discard(uri)
        return types.EmptyResult()

    async def _listen(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.SubscriptionsListenRequestParams,
    ) -> types.SubscriptionsListenResult:
        """2026-07-28 `subscriptions/listen`: the subscription lives as long as this stream."""
        caller = self._caller(ctx)
        uris = list(dict.fromkeys(params.notifications.resource_subscriptions or []))
        if len(uris) > MAX_SUBSCRIPTIONS:
            raise MCPError(
                ErrorCode.INVALID_PARAMS, f"At most {MAX_SUBSCRIPTIONS} resources per stream"
            )
        bus = InMemorySubscriptionBus()

        async def publish(uri: str) -> None:
            await bus.publish(ResourceUpdated(uri))

        state = self._watcher(caller, publish)
        try:
            for uri in uris:
                await self._watch(caller, state, uri)
            return await ListenHandler(bus, max_subscriptions=1, max_buffered_events=256)(
                ctx, params
            )
        finally:
            await self.admission.release(state.subscriber)

    def _watcher(self, caller: McpCaller, notify: Notify) -> _SessionState:
        """A gateway change group for one subscriber, pushing under the current policy."""
        holder: list[_SessionState] = []
        subscriber = self.admission.subscriber(
            caller, lambda msg: self._changed(holder[0], msg) if holder else None
        )
        holder.append(_SessionState(subscriber, notify))
        return holder[0]

    async def _watch(self, caller: McpCaller, state: _SessionState, uri: str) -> None:
        """Add a component's readable controls to the subscriber's change group through the
        pipeline (policy, audit); the hub shares them with every other subscriber."""
        component = component_of(uri)
        if uri in state.uris:
            return
        if len(state.uris) >= MAX_SUBSCRIPTIONS:
            raise MCPError(
                ErrorCode.INVALID_REQUEST,
                f"At most {MAX_SUBSCRIPTIONS} subscriptions per session; unsubscribe first",
            )
        policy = self.admission.policy

        async def add() -> None:
            names = ["*"]  # policy first: refused alike whether or not the component exists
            if policy.component_readable(caller.subject.name, component):
                specs = await self._controls(caller, component)
                names = [
                    c.name for c in readable(policy, caller.subject.name, component, specs)
                ] or ["*"]
            await self.admission.call(
                caller,
                "ChangeGroup.AddComponentControl",
                {
                    "Id": GROUP_ID,
                    "Component": {"Name": component, "Controls": [{"Name": n} for n in names]},
                },
                subscriber=state.subscriber,
            )
            session = state.subscriber.session
            if not state.autopoll and session is not None:
                # gateway plumbing, not a Core call: the hub already polls the Core
                await session.call(
                    "ChangeGroup.AutoPoll", {"Id": GROUP_ID, "Rate": SUBSCRIPTION_POLL}
                )
                state.autopoll = True

        try:
            await self.admission.invoke(
                caller, "ChangeGroup.AddComponentControl", {"Id": GROUP_ID}, add
            )
        except Refusal as err:
            raise MCPError(
                _mcp_code(err),
                explain(err, "ChangeGroup.AddComponentControl", component),
                _retry(err),
            ) from None
        except QrcError as exc:
            raise MCPError(exc.code, exc.message) from None
        state.uris.add(uri)

    def _changed(self, state: _SessionState, message: dict[str, Any]) -> None:
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
            if uri in state.uris and uri not in state.pending:
                state.pending.add(uri)
                task = asyncio.get_running_loop().create_task(self._notify(state, uri))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _notify(self, state: _SessionState, uri: str) -> None:
        try:
            await state.notify(uri)
        except Exception as exc:
            log.info("could not notify an MCP client of %s: %s", uri, type(exc).__name__)
        finally:
            state.pending.discard(uri)


def _weight(args: _Args) -> int:
    """What a tool call holds of the in-flight gate: 1 + the controls it names."""
    values = getattr(args, "values", None) or getattr(args, "controls", None) or ()
    return 1 + len(values)


def _session_id(ctx: ServerRequestContext[Any, Any]) -> str | None:
    headers = getattr(ctx.request, "headers", None)
    sid = headers.get(SESSION_HEADER) if headers is not None else None
    return sid if isinstance(sid, str) else None


def _type_problem(spec: ControlSpec, value: Any) -> str:
    if spec.type in ("Boolean", "Trigger"):
        return "" if isinstance(value, bool) or value in (0, 1) else "expects true or false"
    if spec.type == "Text":
        return "" if isinstance(value, str) else "expects text"
    if isinstance(value, bool) or not isinstance(value, int | float):
        unit = f" in {spec.units}" if spec.units else ""
        return f"expects a number{unit}"
    if spec.type == "Integer" and not float(value).is_integer():
        return "expects a whole number"
    return ""


def _cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit() or len(cursor) > 9:
        raise MCPError(ErrorCode.INVALID_PARAMS, "Invalid cursor")
    return int(cursor)


def _mcp_code(err: Refusal) -> int:
    code = err.code
    return code if code < 0 else ErrorCode.INVALID_PARAMS


def _retry(err: Refusal) -> dict[str, Any] | None:
    if err.code == ErrorCode.RATE_LIMITED:
        return {"retryAfterSeconds": round(max(0.001, err.retry_after), 3)}
    return None


def _tool_error(message: str, **data: Any) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)],
        structured_content={"message": message, **data},
        is_error=True,
    )


def _describe(exc: PydanticValidationError) -> str:
    parts = []
    for e in exc.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "arguments"
        parts.append(f"{loc}: {e['msg']}")
    return "Invalid arguments: " + "; ".join(parts)


def _too_large(limit: int) -> QrcError:
    return QrcError(ErrorCode.INVALID_REQUEST, f"Request body over {limit} bytes")


def _user(subject: str) -> AuthenticatedUser:
    """The SDK's owner of a session: the subject (its sessions answer only to it)."""
    return AuthenticatedUser(AccessToken(token="-", client_id=subject, scopes=[]))  # noqa: S106


def _too_many_sessions(cap: int) -> web.Response:
    return _error(
        QrcError(
            ErrorCode.RATE_LIMITED,
            f"Too many MCP sessions for this subject (at most {cap}); end one with DELETE "
            "or reuse its Mcp-Session-Id",
        ),
        retry_after=5.0,
    )


def _error(
    err: QrcError,
    status: int | None = None,
    headers: dict[str, str] | None = None,
    retry_after: float = 0.0,
) -> web.Response:
    h = dict(headers or {})
    code = status or HTTP_STATUS.get(err.code, 400)
    if code == 401:
        h["WWW-Authenticate"] = 'Bearer realm="qsys-gateway"'
    if code in (429, 503):
        h["Retry-After"] = str(max(1, math.ceil(retry_after or 1.0)))
    return web.Response(
        body=orjson.dumps(jsonrpc.error_message(None, err)),
        status=code,
        content_type="application/json",
        headers=h,
    )
