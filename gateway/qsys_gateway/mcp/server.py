"""The MCP SDK's low-level `Server` with the gateway's handlers: the tools (`tools.py`,
one record each) and the resources (`resources.py`). Each handler finds the caller the
HTTP side authenticated (`endpoint.py`) in the request's scope."""

from __future__ import annotations

from typing import Any

import mcp_types as types
import orjson
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from qsys_protocol.qrc.errors import ErrorCode

from .. import __version__
from .admission import McpAdmission, McpCaller, Refusal
from .context import Ctx
from .design import Design, Writable, writable
from .refusals import invalid_arguments, protocol_error, refused_tool
from .resources import Resources
from .tools import BY_NAME, MAX_SCHEMA_COMPONENTS, tools_for

CALLER_KEY = "qsys.caller"
"""Where the HTTP side puts the authenticated `McpCaller` in the ASGI scope."""

INSTRUCTIONS = (
    "Controls a Q-SYS audio/video system through an access-controlled gateway. "
    "Find components with list_components, read them with get_component, change them "
    "with set_controls. You only see what your token may read or write."
)

Context = ServerRequestContext[Any, Any]


class McpServer:
    def __init__(self, admission: McpAdmission) -> None:
        self.admission = admission
        self.design = Design(lambda: admission.engine_status)
        self.resources = Resources(admission, self.context)
        r = self.resources
        self.sdk: Server[Any] = Server(
            "qsys-gateway",
            version=__version__,
            instructions=INSTRUCTIONS,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=r.list,
            on_list_resource_templates=r.templates,
            on_read_resource=r.read,
            on_subscribe_resource=r.subscribe,
            on_unsubscribe_resource=r.unsubscribe,
            on_subscriptions_listen=r.listen,
        )

    def context(self, rctx: Context) -> Ctx:
        scope = getattr(rctx.request, "scope", None)
        caller = scope.get(CALLER_KEY) if isinstance(scope, dict) else None
        if not isinstance(caller, McpCaller):
            raise MCPError(ErrorCode.INVALID_REQUEST, "No authenticated HTTP request")
        return Ctx(self.admission, self.design, caller)

    async def list_tools(
        self, rctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        ctx = self.context(rctx)
        subject = self.admission.current(ctx.caller)
        policy = ctx.policy
        writes: list[tuple[str, Writable]] = []
        if policy.has_rule_for(subject.name, "Component.Set"):
            try:
                components = sorted(c.Name for c in await ctx.components())
            except Refusal as err:
                raise protocol_error(err, "Component.GetComponents") from None
            for comp in components:
                if len(writes) > MAX_SCHEMA_COMPONENTS:
                    break
                if not policy.component_writable(subject.name, comp):
                    continue
                try:
                    specs = await ctx.controls(comp)
                except Refusal:
                    continue  # gone from the design since it was listed
                allowed = writable(policy, subject.name, comp, specs)
                if allowed:
                    writes.append((comp, allowed))
        return types.ListToolsResult(tools=tools_for(policy, subject, writes))

    async def call_tool(
        self, rctx: Context, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        ctx = self.context(rctx)
        tool = BY_NAME.get(params.name)
        subject = self.admission.current(ctx.caller)
        if tool is None or not ctx.policy.has_rule_for(subject.name, tool.method):
            raise MCPError(
                ErrorCode.INVALID_PARAMS, f"Unknown tool {params.name[:64]!r}; call tools/list"
            )
        try:
            args = tool.args.model_validate(params.arguments or {})
        except ValidationError as exc:
            return invalid_arguments(exc)
        try:
            result = await self.admission.invoke(
                ctx.caller,
                tool.method,
                params.arguments,
                lambda: tool.run(ctx, args),
                args.weight(),
            )
        except Refusal as err:
            component = getattr(args, "component", "") or getattr(args, "name", "")
            controls = list(getattr(args, "values", {}) or getattr(args, "controls", []) or [])
            return refused_tool(err, tool.method, component, controls)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=orjson.dumps(result).decode())],
            structured_content=result,
        )
