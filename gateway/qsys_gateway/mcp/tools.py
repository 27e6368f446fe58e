"""Tool definitions for one subject: which tools it sees and their input schemas, with each
control's type and effective range (the Core's range intersected with the rule's)."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import mcp_types as types

from qsys_protocol.config import SubjectConfig

from ..policy import Policy
from .design import ControlSpec, Writable

STATUS = "core_status"
LIST = "list_components"
GET = "get_component"
SET = "set_controls"
SNAPSHOT = "load_snapshot"
NAMES = (STATUS, LIST, GET, SET, SNAPSHOT)

MAX_SCHEMA_COMPONENTS = 64
"""Writable components spelled out in `set_controls`' schema; beyond, `get_component`
tells the ranges."""
PAGE = 50
MAX_PAGE = 200


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
        bounds = f"{_num(low)}..{_num(high)}{unit}" if low is not None and high is not None else ""
        schema["description"] = f"{spec.type}{unit}" + (f", {bounds}" if bounds else "")
    return schema


def _num(v: float | None) -> str:
    if v is None:
        return "?"
    return str(int(v)) if float(v).is_integer() else str(v)


def snapshot_names(subject: SubjectConfig) -> list[str]:
    """Literal snapshot names of the subject's `Snapshot.Load` rules (globs left out)."""
    names: list[str] = []
    for rule in subject.rules:
        if any(fnmatchcase("Snapshot.Load", m) for m in rule.methods):
            names.extend(c for c in rule.components if not any(ch in c for ch in "*?["))
    return list(dict.fromkeys(names))


def tools_for(
    policy: Policy,
    subject: SubjectConfig,
    writable: list[tuple[str, Writable]],
) -> list[types.Tool]:
    name = subject.name
    out: list[types.Tool] = []
    ro = types.ToolAnnotations(read_only_hint=True, open_world_hint=False)
    if policy.has_rule_for(name, "StatusGet"):
        out.append(
            types.Tool(
                name=STATUS,
                description=(
                    "State of the Q-SYS Core: design name, Active/Standby/Idle, platform, "
                    "status code (0 = OK) and whether the gateway reaches it."
                ),
                input_schema={"type": "object", "properties": {}, "additionalProperties": False},
                annotations=ro,
            )
        )
    if policy.has_rule_for(name, "Component.Get"):
        out.append(
            types.Tool(
                name=LIST,
                description=(
                    "Components of the Core's design you may read, sorted by name, "
                    f"{PAGE} per page. Filter with a case-insensitive substring or glob "
                    "(e.g. 'Room101*'); pass nextOffset back as offset for the next page."
                ),
                input_schema={
                    "type": "object",
                    "properties": {
                        "filter": {"type": "string", "maxLength": 256},
                        "offset": {"type": "integer", "minimum": 0, "default": 0},
                        "limit": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_PAGE,
                            "default": PAGE,
                        },
                    },
                    "additionalProperties": False,
                },
                annotations=ro,
            )
        )
        out.append(
            types.Tool(
                name=GET,
                description=(
                    "Current values of a component's controls (those you may read): value, "
                    "text as shown on the Core (with units, e.g. '-20.0dB'), position 0..1, "
                    "type, range and whether you may write it. Optionally only some controls."
                ),
                input_schema={
                    "type": "object",
                    "properties": {
                        "component": {"type": "string", "minLength": 1, "maxLength": 256},
                        "controls": {
                            "type": "array",
                            "items": {"type": "string", "minLength": 1, "maxLength": 256},
                            "maxItems": 1024,
                        },
                    },
                    "required": ["component"],
                    "additionalProperties": False,
                },
                annotations=ro,
            )
        )
    if writable:
        out.append(_set_tool(writable))
    if policy.has_rule_for(name, "Snapshot.Load"):
        names = snapshot_names(subject)
        snap_name: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 256}
        if names:
            snap_name["enum"] = names
        out.append(
            types.Tool(
                name=SNAPSHOT,
                description=(
                    "Recall a stored snapshot bank (a preset of many controls at once). "
                    "ramp: seconds to fade to the stored values (0 = at once)."
                ),
                input_schema={
                    "type": "object",
                    "properties": {
                        "name": snap_name,
                        "bank": {"type": "integer", "minimum": 1, "maximum": 1000},
                        "ramp": {"type": "number", "minimum": 0, "maximum": 3600},
                    },
                    "required": ["name", "bank"],
                    "additionalProperties": False,
                },
                annotations=types.ToolAnnotations(destructive_hint=False, open_world_hint=False),
            )
        )
    return out


def _set_tool(
    writable: list[tuple[str, Writable]],
) -> types.Tool:
    variants: list[dict[str, Any]] = []
    for component, controls in writable[:MAX_SCHEMA_COMPONENTS]:
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
    if len(writable) > MAX_SCHEMA_COMPONENTS:
        variants.append(
            {
                "properties": {
                    "component": {
                        "not": {"enum": [c for c, _ in writable[:MAX_SCHEMA_COMPONENTS]]}
                    },
                    "values": {"type": "object", "minProperties": 1},
                }
            }
        )
    return types.Tool(
        name=SET,
        description=(
            "Set one or more controls of one component at once, e.g. "
            '{"component": "Room101 Zone1 Gain", "values": {"gain": -20, "mute": false}}. '
            "Gains are in dB; booleans are true/false. Only the controls and ranges listed "
            "here are allowed; ramp: seconds to fade numeric values (0 = at once)."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "component": {"type": "string", "minLength": 1, "maxLength": 256},
                "values": {"type": "object", "minProperties": 1, "maxProperties": 1024},
                "ramp": {"type": "number", "minimum": 0, "maximum": 3600},
            },
            "required": ["component", "values"],
            "oneOf": variants,
        },
        annotations=types.ToolAnnotations(destructive_hint=False, open_world_hint=False),
    )
