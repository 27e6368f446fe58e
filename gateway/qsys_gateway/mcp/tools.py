"""The MCP tools, one record each: its arguments' model (the input schema is derived
from it, then narrowed to the subject's rules and the Core's ranges), the QRC method a
subject's rules must name to be offered it, and its function. Adding a tool is adding
one record to `TOOLS`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import cached_property
from typing import Annotated, Any
from urllib.parse import quote

import mcp_types as types
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic.json_schema import SkipJsonSchema

from qsys_protocol.config import SubjectConfig

from ..policy import Policy
from .admission import Refusal
from .context import Ctx
from .design import ControlSpec, Writable, readable, writable
from .refusals import GET_TOOL, LIST_TOOL, invalid, number, out_of_range

STATUS = "core_status"
LIST = LIST_TOOL
GET = GET_TOOL
SET = "set_controls"
SNAPSHOT = "load_snapshot"

MAX_SCHEMA_COMPONENTS = 64
"""Writable components spelled out in `set_controls`' schema; beyond, `get_component`
tells the ranges."""
PAGE = 50
MAX_PAGE = 200
URI_PREFIX = "qsys://component/"


def uri_of(component: str) -> str:
    """The resource of a component (`resources.py`)."""
    return URI_PREFIX + quote(component, safe="")


# ---- arguments ------------------------------------------------------------------------


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    def weight(self) -> int:
        """What the call holds of the in-flight gate: 1 + the controls it names."""
        return 1


Name = Annotated[StrictStr, Field(min_length=1, max_length=256)]
Value = StrictBool | StrictInt | StrictFloat | Annotated[StrictStr, Field(max_length=4096)]
Ramp = Annotated[float, Field(ge=0, le=3600)] | SkipJsonSchema[None]


class StatusArgs(Args):
    pass


class ListArgs(Args):
    filter: Annotated[StrictStr, Field(max_length=256)] | SkipJsonSchema[None] = None
    offset: Annotated[StrictInt, Field(ge=0, le=1_000_000)] = 0
    limit: Annotated[StrictInt, Field(ge=1, le=MAX_PAGE)] = PAGE


class GetArgs(Args):
    component: Name
    controls: Annotated[list[Name], Field(max_length=1024)] | SkipJsonSchema[None] = None

    def weight(self) -> int:
        return 1 + len(self.controls or ())


class SetArgs(Args):
    component: Name
    values: Annotated[dict[Name, Value], Field(min_length=1, max_length=1024)]
    ramp: Ramp = None

    def weight(self) -> int:
        return 1 + len(self.values)


class SnapshotArgs(Args):
    name: Name
    bank: Annotated[StrictInt, Field(ge=1, le=1000)]
    ramp: Ramp = None


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema as a tool's input schema (no titles, no null defaults)."""

    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: clean(v)
                for k, v in node.items()
                if k != "title" and not (k == "default" and v is None)
            }
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    schema: dict[str, Any] = clean(model.model_json_schema())
    return schema


# ---- the records ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Offer:
    """What a subject is offered tools from: its rules, and the controls it may write
    of the first components of the design (with their effective ranges)."""

    policy: Policy
    subject: SubjectConfig
    writable: list[tuple[str, Writable]] = field(default_factory=list)


Tailor = Callable[[dict[str, Any], Offer], dict[str, Any] | None]


@dataclass(frozen=True)
class McpTool:
    name: str
    method: str
    """The QRC method a subject's rules must name to be offered the tool; a call of
    the tool is charged to the rate limit as one call of it."""
    args: type[Args]
    description: str
    annotations: types.ToolAnnotations
    run: Callable[[Ctx, Any], Awaitable[dict[str, Any]]]
    tailor: Tailor | None = None
    """The subject's own input schema from the model's; None: not offered to it."""

    @cached_property
    def schema(self) -> dict[str, Any]:
        return schema_of(self.args)

    def offer(self, offer: Offer) -> types.Tool | None:
        if not offer.policy.has_rule_for(offer.subject.name, self.method):
            return None
        schema = self.schema
        if self.tailor is not None:
            tailored = self.tailor(schema, offer)
            if tailored is None:
                return None
            schema = tailored
        return types.Tool(
            name=self.name,
            description=self.description,
            input_schema=schema,
            annotations=self.annotations,
        )


# ---- the functions --------------------------------------------------------------------


async def core_status(ctx: Ctx, args: StatusArgs) -> dict[str, Any]:
    status = await ctx.call("StatusGet", None)
    return {"core": status, "gatewayReachesCore": ctx.admission.core_reachable}


async def list_components(ctx: Ctx, args: ListArgs) -> dict[str, Any]:
    policy, subject = ctx.policy, ctx.subject
    components = await ctx.components()
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
    ctx.admission.count(ctx.caller, "Component.GetComponents", "ok")
    out: dict[str, Any] = {
        "total": len(names),
        "components": [{"name": c.Name, "type": c.Type, "uri": uri_of(c.Name)} for c in page],
    }
    if args.offset + args.limit < len(names):
        out["nextOffset"] = args.offset + args.limit
    return out


async def get_component(ctx: Ctx, args: GetArgs) -> dict[str, Any]:
    return {"component": args.component, "controls": await read_component(ctx, args)}


async def read_component(ctx: Ctx, args: GetArgs) -> dict[str, Any]:
    """The readable controls of a component, with type, range and writability."""
    policy, subject = ctx.policy, ctx.subject
    wanted = list(dict.fromkeys(args.controls or []))
    hidden = [c for c in wanted if not policy.can_read(subject, args.component, c)]
    if hidden or not policy.component_readable(subject, args.component):
        # policy first: the same refusal whether or not the component or control exists
        ref = [{"Name": c} for c in hidden or wanted or ["*"]]
        await ctx.call("Component.Get", {"Name": args.component, "Controls": ref})
    specs = await ctx.controls(args.component)
    unknown = [c for c in wanted if c not in specs]
    if unknown:
        raise invalid(
            f"Unknown control(s) {', '.join(unknown[:8])} of {args.component!r}; "
            f"omit 'controls' to see all you may read.",
            "unknown_control",
        )
    chosen = (
        [specs[c] for c in wanted] if wanted else readable(policy, subject, args.component, specs)
    )
    if not chosen:
        chosen = [s for s in specs.values() if s.readable][:1]
    result = await ctx.call(
        "Component.Get",
        {"Name": args.component, "Controls": [{"Name": c.name} for c in chosen]},
    )
    values = {c.get("Name"): c for c in (result or {}).get("Controls", []) if isinstance(c, dict)}
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


async def set_controls(ctx: Ctx, args: SetArgs) -> dict[str, Any]:
    policy, subject = ctx.policy, ctx.subject
    if not all(policy.write_range(subject, args.component, n)[0] for n in args.values):
        # policy first: refused as /v1/rpc refuses it, before the design is looked at,
        # so nothing tells whether the component or its controls exist
        writes = [{"Name": n, "Value": v} for n, v in args.values.items()]
        await ctx.call("Component.Set", {"Name": args.component, "Controls": writes})
    specs = await ctx.controls(args.component)
    controls: list[dict[str, Any]] = []
    for name, value in args.values.items():
        spec = specs.get(name)
        if spec is None:
            raise invalid(
                f"Unknown control {name!r} of {args.component!r}; see {GET}.", "unknown_control"
            )
        problem = type_problem(spec, value)
        if problem:
            raise invalid(f"{name}: {problem}", "invalid_arguments")
        write: dict[str, Any] = {"Name": name, "Value": value}
        if args.ramp is not None and spec.type in ("Float", "Integer"):
            write["Ramp"] = args.ramp
        controls.append(write)
    try:
        await ctx.call("Component.Set", {"Name": args.component, "Controls": controls})
    except Refusal as err:
        raise out_of_range(err, specs) or err from None
    return {"component": args.component, "set": args.values}


async def load_snapshot(ctx: Ctx, args: SnapshotArgs) -> dict[str, Any]:
    p: dict[str, Any] = {"Name": args.name, "Bank": args.bank}
    if args.ramp is not None:
        p["Ramp"] = args.ramp
    await ctx.call("Snapshot.Load", p)
    return {"loaded": args.name, "bank": args.bank}


def type_problem(spec: ControlSpec, value: Any) -> str:
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


# ---- the subject's schemas ------------------------------------------------------------


def value_schema(spec: ControlSpec, low: float | None, high: float | None) -> dict[str, Any]:
    unit = f" {spec.units}" if spec.units else ""
    schema: dict[str, Any]
    if spec.type == "Boolean":
        schema = {"type": "boolean", "description": "true = on"}
    elif spec.type == "Trigger":
        schema = {"type": "boolean", "const": True, "description": "true fires the trigger"}
    elif spec.type == "Text":
        schema = {"type": "string", "maxLength": 4096}
    else:
        schema = {"type": "integer" if spec.type == "Integer" else "number"}
        if low is not None:
            schema["minimum"] = low
        if high is not None:
            schema["maximum"] = high
        bounds = (
            f"{number(low)}..{number(high)}{unit}" if low is not None and high is not None else ""
        )
        schema["description"] = f"{spec.type}{unit}" + (f", {bounds}" if bounds else "")
    return schema


def writable_values(schema: dict[str, Any], offer: Offer) -> dict[str, Any] | None:
    """`set_controls` lists, per component, the controls the subject may write with their
    effective ranges; not offered when it may write none."""
    if not offer.writable:
        return None
    shown = offer.writable[:MAX_SCHEMA_COMPONENTS]
    variants: list[dict[str, Any]] = []
    for component, controls in shown:
        props = {c.name: value_schema(c, low, high) for c, low, high in controls}
        variants.append(
            {
                "properties": {
                    "component": {"const": component},
                    "values": {
                        "type": "object",
                        "properties": props,
                        "additionalProperties": False,
                        "minProperties": 1,
                    },
                },
            }
        )
    if len(offer.writable) > MAX_SCHEMA_COMPONENTS:
        variants.append(
            {
                "properties": {
                    "component": {"not": {"enum": [c for c, _ in shown]}},
                    "values": {"type": "object", "minProperties": 1},
                }
            }
        )
    return {**schema, "oneOf": variants}


def snapshot_names(schema: dict[str, Any], offer: Offer) -> dict[str, Any]:
    """`load_snapshot` offers the snapshot names its rules spell out (globs left out)."""
    names = offer.policy.literal_components(offer.subject.name, "Snapshot.Load")
    if not names:
        return schema
    props = dict(schema["properties"])
    props["name"] = {**props["name"], "enum": names}
    return {**schema, "properties": props}


_READ_ONLY = types.ToolAnnotations(read_only_hint=True, open_world_hint=False)
_CHANGES = types.ToolAnnotations(destructive_hint=False, open_world_hint=False)

TOOLS: tuple[McpTool, ...] = (
    McpTool(
        STATUS,
        "StatusGet",
        StatusArgs,
        "State of the Q-SYS Core: design name, Active/Standby/Idle, platform, "
        "status code (0 = OK) and whether the gateway reaches it.",
        _READ_ONLY,
        core_status,
    ),
    McpTool(
        LIST,
        "Component.Get",
        ListArgs,
        f"Components of the Core's design you may read, sorted by name, {PAGE} per page. "
        "Filter with a case-insensitive substring or glob (e.g. 'Room101*'); pass "
        "nextOffset back as offset for the next page.",
        _READ_ONLY,
        list_components,
    ),
    McpTool(
        GET,
        "Component.Get",
        GetArgs,
        "Current values of a component's controls (those you may read): value, text as "
        "shown on the Core (with units, e.g. '-20.0dB'), position 0..1, type, range and "
        "whether you may write it. Optionally only some controls.",
        _READ_ONLY,
        get_component,
    ),
    McpTool(
        SET,
        "Component.Set",
        SetArgs,
        "Set one or more controls of one component at once, e.g. "
        '{"component": "Room101 Zone1 Gain", "values": {"gain": -20, "mute": false}}. '
        "Gains are in dB; booleans are true/false. Only the controls and ranges listed "
        "here are allowed; ramp: seconds to fade numeric values (0 = at once).",
        _CHANGES,
        set_controls,
        writable_values,
    ),
    McpTool(
        SNAPSHOT,
        "Snapshot.Load",
        SnapshotArgs,
        "Recall a stored snapshot bank (a preset of many controls at once). "
        "ramp: seconds to fade to the stored values (0 = at once).",
        _CHANGES,
        load_snapshot,
        snapshot_names,
    ),
)
BY_NAME = {t.name: t for t in TOOLS}
NAMES = tuple(BY_NAME)


def tools_for(
    policy: Policy, subject: SubjectConfig, writable: list[tuple[str, Writable]]
) -> list[types.Tool]:
    offer = Offer(policy, subject, writable)
    return [tool for record in TOOLS if (tool := record.offer(offer)) is not None]
