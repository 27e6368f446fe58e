"""The pure parts of `kubectl qsys`: can-i params and decisions, status summary, audit lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qsys_gateway.audit import AuditLog
from qsys_gateway.metrics import GatewayMetrics
from qsys_kubectl.cluster import as_model
from qsys_kubectl.views import (
    PluginError,
    audit_lines,
    audit_row,
    call_params,
    can_i,
    core_summary,
    merge_by_time,
    status_rows,
    table,
)
from qsys_operator.api import AccessPolicy
from qsys_protocol.config import Rule, SubjectConfig

PANEL = SubjectConfig(
    name="panel",
    tokenSha256="0" * 64,
    rules=[
        Rule(methods=["StatusGet", "Component.Get"]),
        Rule(
            methods=["Component.Set"],
            components=["gain*"],
            controls=["gain"],
            valueRange={"min": -100, "max": 0},
        ),
        Rule(methods=["Control.Set"], controls=["Master*"]),
        Rule(methods=["Snapshot.Load"], components=["scenes"]),
    ],
)


@pytest.mark.parametrize(
    ("call", "allowed", "reason"),
    [
        (("StatusGet", None, None), True, "allowed by rule 0"),
        (("Component.Get", "gain1.gain", None), True, "allowed by rule 0"),
        (("Component.Set", "gain1.gain", "-6.5"), True, "allowed by rule 1"),
        (("Component.Set", "gain1.gain", "5"), False, "no rule allows gain1.gain"),
        (("Component.Set", "gain1.gain", "loud"), False, "no rule allows gain1.gain"),
        (("Component.Set", "mixer.gain", "-6"), False, "no rule allows mixer.gain"),
        (("Control.Set", "MasterGain", "0"), True, "allowed by rule 2"),
        (("Control.Set", "Other", "0"), False, "no rule allows Other"),
        (("Snapshot.Load", "scenes", "2"), True, "allowed by rule 3"),
        (("Snapshot.Save", "scenes", "2"), False, "no rule allows method Snapshot.Save"),
        (("Component.GetControls", "gain1", None), False, "no rule allows method"),
    ],
)
def test_can_i_is_the_gateway_decision(
    call: tuple[str, str | None, str | None], allowed: bool, reason: str
) -> None:
    method, target, value = call
    decision = can_i(PANEL, method, call_params(method, target, value))
    assert decision.allowed is allowed
    assert decision.reason.startswith(reason)


def test_call_params_shapes() -> None:
    assert call_params("StatusGet", None, None) == {}
    assert call_params("Component.Set", "a.b.c", "true") == {
        "Name": "a",
        "Controls": [{"Name": "b.c", "Value": True}],
    }
    assert call_params("Control.Set", "x.y", "hello") == {"Name": "x.y", "String": "hello"}
    assert call_params("Control.Get", "x.y", None) == ["x.y"]
    assert call_params("ChangeGroup.AddComponentControl", "g.gain", None)["Component"] == {
        "Name": "g",
        "Controls": [{"Name": "gain"}],
    }
    with pytest.raises(PluginError, match=r"needs COMPONENT\.CONTROL"):
        call_params("Component.Get", "gain1", None)


def _core(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "room", "namespace": "av"},
        "spec": {"core": {"host": "192.0.2.10"}, "gateway": {"replicas": 2}},
        "status": status,
    }


def test_status_summary_and_table() -> None:
    core = _core(
        gateway={"readyReplicas": 1, "serviceAccountAudience": "room-gateway.av.svc"},
        core={"state": "Active", "designName": "Lobby"},
        subjects=3,
        conditions=[
            {"type": "Ready", "status": "True", "reason": "Ready"},
            {"type": "CoreConnected", "status": "False", "reason": "CoreUnreachable"},
        ],
    )
    policies = [
        {
            "metadata": {"name": "zeta"},
            "spec": {"coreRef": {"name": "room"}, "subjects": [{"name": "a"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "X"}]},
        },
        {"metadata": {"name": "other"}, "spec": {"coreRef": {"name": "hall"}, "subjects": []}},
        {
            "metadata": {"name": "alpha"},
            "spec": {"coreRef": {"name": "room"}, "subjects": [{"name": "b"}]},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}],
                "serviceAccounts": {"b": "system:serviceaccount:av:job"},
            },
        },
    ]
    summary = core_summary(core, policies)
    assert summary["ready"] == "True"
    assert summary["gateways"] == {
        "ready": 1,
        "desired": 2,
        "service": None,
        "serviceAccountAudience": "room-gateway.av.svc",
    }
    assert [p["name"] for p in summary["policies"]] == ["alpha", "zeta"]
    assert summary["policies"][0]["serviceAccounts"] == {"b": "system:serviceaccount:av:job"}
    assert summary["policies"][1]["serviceAccounts"] == {}
    assert summary["problems"] == ["CoreConnected=False(CoreUnreachable)"]
    assert summary["policies"][1]["problems"] == ["Ready=False(X)"]
    rows = status_rows([summary])
    assert rows == [["room", "True", "1/2", "Active", "Lobby", "3", "alpha, zeta(False)"]]
    assert table(("A", "LONGER"), [["xx", "y"]]).splitlines() == ["A    LONGER", "xx   y"]
    empty = core_summary(_core(), [])
    assert (empty["ready"], empty["subjects"], empty["core"]["state"]) == ("Unknown", 0, None)


def test_audit_lines_from_a_real_audit_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path), GatewayMetrics())
    for subject, decision in (("panel", "allow"), ("kiosk", "deny")):
        log.record(
            request_id="r1",
            subject=subject,
            source_ip="127.0.0.1",
            transport="http",
            method="Component.Set",
            targets=("gain1.gain",),
            values=(-6,),
            decision=decision,
            reason="allowed by rule 1",
            outcome="ok",
            duration_ms=1.0,
        )
    log.close()
    noise = ['{"level": "info", "msg": "reloaded"}', "plain text", "{broken"]
    lines = [*noise, *path.read_text().splitlines()]
    records = list(audit_lines(lines, pod="gw-0"))
    assert [(r["subject"], r["pod"]) for r in records] == [("panel", "gw-0"), ("kiosk", "gw-0")]
    only = list(audit_lines(lines, subject="kiosk"))
    assert [r["decision"] for r in only] == ["deny"]
    row = audit_row(only[0])
    assert row[1:] == ["kiosk", "Component.Set", "gain1.gain", "deny", "ok", "allowed by rule 1"]


def test_audit_of_several_pods_is_one_timeline() -> None:
    a = [{"ts": "2026-11-30T21:00:00.100+00:00", "n": 1, "pod": "a"}]
    a.append({"ts": "2026-11-30T21:00:00.300+00:00", "n": 3, "pod": "a"})
    b = [{"ts": "2026-11-30T21:00:00.200+00:00", "n": 2, "pod": "b"}]
    b.append({"ts": "2026-11-30T21:00:00.300+00:00", "n": 4, "pod": "b"})
    assert [r["n"] for r in merge_by_time([*a, *b])] == [1, 2, 3, 4]
    assert merge_by_time([]) == []


def test_a_resource_of_another_version_is_a_clear_error() -> None:
    body: dict[str, Any] = {
        "apiVersion": "qsys.dev/v1alpha1",
        "kind": "AccessPolicy",
        "metadata": {"name": "panel"},
        "spec": {"coreRef": {"name": "room"}, "subjects": [{"name": "gen"}], "newField": 1},
    }
    with pytest.raises(PluginError) as caught:
        as_model(AccessPolicy, body)
    assert 'AccessPolicy "panel" does not match this kubectl-qsys' in str(caught.value)
    assert "spec.newField" in str(caught.value)
    del body["spec"]["newField"]
    assert as_model(AccessPolicy, body).spec.coreRef.name == "room"
