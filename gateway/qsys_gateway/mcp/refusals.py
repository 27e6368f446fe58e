"""The edge: a `Refusal` as MCP tells it, an `isError` tool result (with what to do
about it) or, outside a tool call, an MCP protocol error."""

from __future__ import annotations

from typing import Any

import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from qsys_protocol.qrc.errors import ErrorCode

from .admission import Refusal, outcome_of
from .design import ControlSpec, effective_range

LIST_TOOL = "list_components"
GET_TOOL = "get_component"


def invalid(message: str, kind: str) -> Refusal:
    """Arguments an agent can fix: an `isError` tool result, the message as written."""
    return Refusal(ErrorCode.INVALID_PARAMS, message, kind=kind)


def number(v: float | None) -> str:
    if v is None:
        return "?"
    return str(int(v)) if float(v).is_integer() else str(v)


def out_of_range(err: Refusal, specs: dict[str, ControlSpec]) -> Refusal | None:
    """The policy's refusal of a write for its value alone, naming the allowed range
    (the rule's, within the Core's); None for any other refusal."""
    limit = err.decision.out_of_range if err.decision is not None else None
    spec = specs.get(limit.control) if limit is not None else None
    if limit is None or spec is None:
        return None
    low, high = effective_range(spec, limit.low, limit.high)
    unit = f" {spec.units}" if spec.units else ""
    return Refusal(
        ErrorCode.FORBIDDEN,
        f"{limit.component}.{limit.control} = {limit.value}{unit} is outside your allowed "
        f"range {number(low)}..{number(high)}{unit}",
    )


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
        return f"Unknown component {component!r}; use {LIST_TOOL} to find names."
    if code == ErrorCode.UNKNOWN_CONTROL:
        return f"Unknown control of {component!r}; use {GET_TOOL} to see its controls."
    if code in (ErrorCode.CORE_UNAVAILABLE, ErrorCode.CORE_TIMEOUT):
        return f"{message}; retry in a few seconds."
    return message


def tool_error(message: str, **data: Any) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)],
        structured_content={"message": message, **data},
        is_error=True,
    )


def refused_tool(
    err: Refusal, method: str, component: str, controls: list[str]
) -> types.CallToolResult:
    """A tool call's refusal as its `isError` result."""
    if err.kind is not None:
        return tool_error(err.message, error=err.kind)
    retry = {"retryAfterSeconds": round(err.retry_after, 3)} if err.retry_after else {}
    return tool_error(
        explain(err, method, component, controls), error=outcome_of(err.code), **retry
    )


def invalid_arguments(exc: ValidationError) -> types.CallToolResult:
    parts = []
    for e in exc.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "arguments"
        parts.append(f"{loc}: {e['msg']}")
    return tool_error("Invalid arguments: " + "; ".join(parts), error="invalid_arguments")


def protocol_error(err: Refusal, method: str, component: str = "") -> MCPError:
    """A refusal outside a tool call (a resource read, a subscription) as MCP's error."""
    code = err.code if err.code < 0 else ErrorCode.INVALID_PARAMS
    data = None
    if err.code == ErrorCode.RATE_LIMITED:
        data = {"retryAfterSeconds": round(max(0.001, err.retry_after), 3)}
    return MCPError(code, explain(err, method, component), data)
