"""Pure logic of the MCP endpoint: units, effective ranges, tool schemas per policy, URIs,
argument checks, and `spec.gateway.mcp.enabled` rendered into the gateway config."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from qsys_gateway.mcp import tools as T
from qsys_gateway.mcp.design import (
    ControlSpec,
    Writable,
    control_spec,
    effective_range,
    units_of,
    writable,
)
from qsys_gateway.mcp.resources import component_of
from qsys_gateway.mcp.tools import type_problem, uri_of
from qsys_gateway.policy import Policy
from qsys_operator.api import QSysCore
from qsys_operator.render import render_core_children
from qsys_operator.settings import OperatorSettings
from qsys_protocol.config import GatewayConfig, McpConfig, Rule, SubjectConfig
from qsys_protocol.qrc.methods import METHODS

GAIN_INFO = {
    "Name": "gain",
    "Type": "Float",
    "ValueMin": -100,
    "ValueMax": 20,
    "StringMin": "-100.0dB",
    "StringMax": "20.0dB",
    "String": "-20.0dB",
    "Direction": "Read/Write",
}
GAIN = control_spec(GAIN_INFO)
MUTE = control_spec({"Name": "mute", "Type": "Boolean", "ValueMin": 0, "ValueMax": 1})
TEMP = control_spec(
    {"Name": "temp", "Type": "Float", "ValueMin": 0, "ValueMax": 100, "Direction": "Read Only"}
)
SPECS = {c.name: c for c in (GAIN, MUTE, TEMP)}


def subject(name: str, *rules: dict[str, Any]) -> SubjectConfig:
    return SubjectConfig(
        name=name, tokenSha256="0" * 63 + str(len(name) % 10), rules=[Rule(**r) for r in rules]
    )


@pytest.mark.parametrize(
    ("info", "units"),
    [
        ({"StringMin": "-100.0dB"}, "dB"),
        ({"StringMin": "0Hz", "StringMax": "20kHz"}, "Hz"),
        ({"StringMin": "41.5 C"}, "C"),
        ({"StringMin": "-100"}, ""),
        ({"StringMin": "off"}, ""),
        ({}, ""),
    ],
)
def test_units_from_the_cores_strings(info: dict[str, Any], units: str) -> None:
    assert units_of(info) == units


def test_control_spec_and_effective_range() -> None:
    assert (GAIN.type, GAIN.low, GAIN.high, GAIN.units) == ("Float", -100, 20, "dB")
    assert MUTE.low is None  # booleans carry no numeric range
    assert not TEMP.writable
    assert effective_range(GAIN, None, None) == (-100, 20)
    assert effective_range(GAIN, -60, 0) == (-60, 0)
    assert effective_range(GAIN, -200, 50) == (-100, 20)
    assert effective_range(GAIN, None, 0) == (-100, 0)


def test_write_range_is_the_widest_allowing_rule() -> None:
    s = subject(
        "panel",
        {"methods": ["Component.Set"], "components": ["Zone*"], "valueRange": {"min": -60}},
        {"methods": ["Component.*"], "components": ["Zone1"], "valueRange": {"min": -80, "max": 0}},
        {"methods": ["Component.Get"], "components": ["Zone*"], "controls": ["gain"]},
    )
    policy = Policy([s])
    assert policy.write_range("panel", "Zone1", "gain") == (True, -80, None)
    assert policy.write_range("panel", "Zone2", "gain") == (True, -60, None)
    assert policy.write_range("panel", "Lobby", "gain") == (False, None, None)
    assert policy.write_range("nobody", "Zone1", "gain") == (False, None, None)
    assert policy.component_readable("panel", "Zone2")
    assert not policy.component_readable("panel", "Lobby")
    assert policy.has_rule_for("panel", "Component.Set")
    assert not policy.has_rule_for("panel", "Snapshot.Load")
    allowed = writable(policy, "panel", "Zone1", SPECS)
    assert [(c.name, low, high) for c, low, high in allowed] == [
        ("gain", -80, 20),
        ("mute", -80, None),
    ]


def test_tools_follow_the_rules() -> None:
    reader = subject("reader", {"methods": ["Component.Get", "StatusGet"]})
    writer = subject(
        "writer",
        {"methods": ["Component.Get", "Component.Set"], "valueRange": {"min": -60, "max": 0}},
        {"methods": ["Snapshot.Load"], "components": ["Presets", "Scenes*"]},
    )
    policy = Policy([reader, writer])
    assert [t.name for t in T.tools_for(policy, reader, [])] == [T.STATUS, T.LIST, T.GET]
    writes = [("Zone1", writable(policy, "writer", "Zone1", SPECS))]
    tools = {t.name: t for t in T.tools_for(policy, writer, writes)}
    assert set(tools) == {T.LIST, T.GET, T.SET, T.SNAPSHOT}
    branch = tools[T.SET].input_schema["oneOf"][0]["properties"]
    assert branch["component"] == {"const": "Zone1"}
    gain = branch["values"]["properties"]["gain"]
    assert (gain["type"], gain["minimum"], gain["maximum"]) == ("number", -60, 0)
    assert gain["description"] == "Float dB, -60..0 dB"
    assert branch["values"]["properties"]["mute"]["type"] == "boolean"
    assert "temp" not in branch["values"]["properties"]
    assert tools[T.SNAPSHOT].input_schema["properties"]["name"]["enum"] == ["Presets"]
    assert T.tools_for(Policy([subject("none")]), subject("none"), []) == []


def test_set_schema_spells_out_at_most_max_components() -> None:
    row: Writable = [(GAIN, -1.0, 1.0)]
    many = [(f"C{i:03}", row) for i in range(T.MAX_SCHEMA_COMPONENTS + 1)]
    writer = subject("w", {"methods": ["Component.Set"]})
    tool = next(t for t in T.tools_for(Policy([writer]), writer, many) if t.name == T.SET)
    variants = tool.input_schema["oneOf"]
    assert len(variants) == T.MAX_SCHEMA_COMPONENTS + 1
    rest = variants[-1]["properties"]["component"]["not"]["enum"]
    assert len(rest) == T.MAX_SCHEMA_COMPONENTS


def test_resource_uris_round_trip_and_reject_others() -> None:
    assert uri_of("Room101 Zone1 Gain") == "qsys://component/Room101%20Zone1%20Gain"
    assert component_of(uri_of("A/B?c#d")) == "A/B?c#d"
    for bad in ("file:///etc/passwd", "qsys://component/", "qsys://component/" + "x" * 300):
        with pytest.raises(MCPError, match=r"resource|Invalid"):
            component_of(bad)


@pytest.mark.parametrize(
    ("spec", "value", "problem"),
    [
        (GAIN, -20, ""),
        (GAIN, -20.5, ""),
        (GAIN, "loud", "expects a number in dB"),
        (GAIN, True, "expects a number in dB"),
        (MUTE, True, ""),
        (MUTE, 1, ""),
        (MUTE, "yes", "expects true or false"),
        (ControlSpec("sel", "Integer", "Read/Write", 0, 4, ""), 1.5, "expects a whole number"),
        (ControlSpec("label", "Text", "Read/Write", None, None, ""), 3, "expects text"),
    ],
)
def test_argument_types(spec: ControlSpec, value: Any, problem: str) -> None:
    assert type_problem(spec, value) == problem


def test_mcp_enabled_is_rendered_into_the_gateway_config() -> None:
    def config(gateway: dict[str, Any]) -> GatewayConfig:
        core = QSysCore.model_validate(
            {
                "metadata": {"name": "hall", "namespace": "av", "uid": "u", "generation": 1},
                "spec": {"core": {"host": "192.0.2.10"}, "gateway": gateway},
            }
        )
        result = render_core_children(core, [], OperatorSettings())
        secret = next(o for o in result.objects if o["kind"] == "Secret")
        text = base64.b64decode(secret["data"]["gateway.yaml"])
        return GatewayConfig.model_validate(yaml.safe_load(text))

    assert config({}).mcp == McpConfig(enabled=False)
    assert config({"mcp": {"enabled": True}}).mcp.enabled is True


@pytest.mark.parametrize("tool", T.TOOLS, ids=lambda t: t.name)
def test_each_tools_schema_is_its_models(tool: T.McpTool) -> None:
    """One record per tool: the offered schema is derived from the arguments' model, so
    the two cannot drift apart."""
    fields = tool.args.model_fields
    schema = tool.schema
    assert set(schema["properties"]) == set(fields)
    required = {n for n, f in fields.items() if f.is_required()}
    assert set(schema.get("required", [])) == required
    assert schema["additionalProperties"] is False
    assert "title" not in str(schema)
    assert tool.method in METHODS


def test_tool_models_refuse_what_their_schemas_refuse() -> None:
    assert T.ListArgs.model_validate({}).limit == T.PAGE
    with pytest.raises(ValidationError):
        T.ListArgs.model_validate({"limit": T.MAX_PAGE + 1})
    with pytest.raises(ValidationError):
        T.SetArgs.model_validate({"component": "Zone1", "values": {}})
    with pytest.raises(ValidationError):
        T.SetArgs.model_validate({"component": "Zone1", "values": {"gain": float("nan")}})
    with pytest.raises(ValidationError):
        T.GetArgs.model_validate({"component": "Zone1", "extra": 1})
    assert T.SetArgs.model_validate({"component": "Z", "values": {"a": 1, "b": 2}}).weight() == 3
    assert T.GetArgs.model_validate({"component": "Z"}).weight() == 1
