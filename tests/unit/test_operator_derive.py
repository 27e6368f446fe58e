"""Pure status derivation (derive.py): every condition of QSysCore and AccessPolicy."""

from __future__ import annotations

from typing import Any

import pytest

from qsys_operator.derive import (
    CoreFindings,
    PolicyFindings,
    Replicas,
    core_status,
    gateway_condition,
    invalid_core_status,
    policy_status,
    ready_condition,
    rollout_progress,
)
from qsys_operator.render import SubjectConflict
from qsys_operator.status import Cond

T0 = "2026-11-30T10:00:00Z"
T1 = "2026-11-30T10:05:00Z"
CONNECTED = Cond("CoreConnected", "True", "Connected", "Core 192.0.2.10:1710 is Active")
ENGINE = {"State": "Active", "DesignName": "Hall", "Platform": "Core 110f"}


def findings(**kw: Any) -> CoreFindings:
    base: dict[str, Any] = {
        "gateway_name": "hall-gateway",
        "replicas": Replicas(2, 2),
        "connected": CONNECTED,
        "engine": ENGINE,
        "subjects": 3,
        "service_account_audience": "hall-gateway.av.svc",
    }
    return CoreFindings(**{**base, **kw})


def conds(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        (Replicas(None), ("False", "DeploymentMissing", "hall-gateway not found")),
        (Replicas(0), ("False", "NoReplicaAvailable", "0/2 available")),
        (Replicas(1, 1), ("True", "ReplicasAvailable", "1/2 available")),
    ],
)
def test_gateway_available(replicas: Replicas, expected: tuple[str, str, str]) -> None:
    c = gateway_condition("hall-gateway", replicas, 2)
    assert (c.status, c.reason, c.message) == expected


GW_OK = Cond("GatewayAvailable", "True", "ReplicasAvailable", "2/2 available")
GW_DOWN = Cond("GatewayAvailable", "False", "NoReplicaAvailable", "0/2 available")


@pytest.mark.parametrize(
    ("found", "gateway", "reason"),
    [
        (
            findings(secret_problem="Secret db is not marked", apply_error="also"),
            GW_DOWN,
            "SecretNotAccepted",
        ),
        (
            findings(image_problem="spec.gateway.image x is not on the list", secret_problem="s"),
            GW_OK,
            "ImageNotAllowed",
        ),
        (
            findings(apply_error="Deployment x refused by the API server: no"),
            GW_OK,
            "ApplyRejected",
        ),
        (findings(), GW_DOWN, "GatewayUnavailable"),
        (
            findings(connected=Cond("CoreConnected", "False", "CoreUnreachable", "down")),
            GW_OK,
            "CoreNotConnected",
        ),
        (
            findings(connected=Cond("CoreConnected", "Unknown", "NoReadyGateway", "none")),
            GW_OK,
            "CoreNotConnected",
        ),
        (
            findings(connected=Cond("CoreConnected", "Unknown", "ProbeDisabled", "off")),
            GW_OK,
            "Ready",
        ),
        (findings(), GW_OK, "Ready"),
    ],
)
def test_ready_reasons(found: CoreFindings, gateway: Cond, reason: str) -> None:
    ready = ready_condition(found, gateway)
    assert ready.reason == reason
    assert ready.status == ("True" if reason == "Ready" else "False")


def test_ready_carries_the_service_monitor_note() -> None:
    ready = ready_condition(findings(service_monitor_note="no SM CRD"), GW_OK)
    assert ready.message.endswith("; no SM CRD")


def test_ready_carries_the_egress_note() -> None:
    found = findings(egress_note="tracing blocked", service_monitor_note="no SM CRD")
    assert ready_condition(found, GW_OK).message.endswith("; tracing blocked; no SM CRD")


def test_ready_carries_the_identity_note_before_the_service_monitor_note() -> None:
    found = findings(identity_note="API server unknown", service_monitor_note="no SM CRD")
    ready = ready_condition(found, GW_OK)
    assert ready.status == "True"
    assert ready.message.endswith("; API server unknown; no SM CRD")


def test_core_status_first_write_and_events() -> None:
    update = core_status(4, 2, {}, findings(), T0)
    assert update.status is not None
    assert conds(update.status) == {
        "Ready": ("True", "Ready"),
        "GatewayAvailable": ("True", "ReplicasAvailable"),
        "CoreConnected": ("True", "Connected"),
        "SecretsAccepted": ("True", "Accepted"),
    }
    assert update.status["observedGeneration"] == 4
    assert update.status["gateway"] == {
        "readyReplicas": 2,
        "service": "hall-gateway",
        "serviceAccountAudience": "hall-gateway.av.svc",
    }
    assert update.status["core"] == {
        "state": "Active",
        "designName": "Hall",
        "platform": "Core 110f",
        "lastSeen": T0,
    }
    assert update.status["subjects"] == 3
    assert update.events == [
        (
            "Normal",
            "Ready",
            "Ready is True (Ready): gateway available and connected to the Core; "
            "GatewayAvailable is True (ReplicasAvailable): 2/2 available; "
            "CoreConnected is True (Connected): Core 192.0.2.10:1710 is Active; "
            "SecretsAccepted is True (Accepted): every Secret the core uses is allowed",
        )
    ]


def test_one_event_per_type_and_write_led_by_ready() -> None:
    """Transitions of one status write are one Normal and one Warning Event at most: the
    reason is Ready's when Ready changed, else the first transition's; the message names
    every transition of that type."""
    down = Cond("CoreConnected", "False", "CoreUnreachable", "cannot reach")
    update = core_status(4, 2, {}, findings(connected=down, engine=None), T0)
    assert [(t, r) for t, r, _ in update.events] == [
        ("Warning", "CoreNotConnected"),
        ("Normal", "ReplicasAvailable"),
    ]
    warning, normal = (m for _, _, m in update.events)
    assert warning.startswith("Ready is False (CoreNotConnected)")
    assert "; CoreConnected is False (CoreUnreachable): cannot reach" in warning
    assert normal.startswith("GatewayAvailable is True (ReplicasAvailable)")
    assert "; SecretsAccepted is True (Accepted)" in normal
    assert update.status is not None
    fixed = core_status(4, 2, update.status, findings(), T1)
    assert [(t, r) for t, r, _ in fixed.events] == [("Normal", "Ready")]
    assert "CoreConnected is True (Connected)" in fixed.events[0][2]


def test_core_status_unchanged_but_last_seen_is_no_write() -> None:
    first = core_status(4, 2, {}, findings(), T0).status
    assert first is not None
    again = core_status(4, 2, first, findings(), T1)
    assert again.status is None
    assert again.events == []


def test_core_unreachable_keeps_the_last_design_and_warns() -> None:
    first = core_status(4, 2, {}, findings(), T0).status
    assert first is not None
    down = Cond("CoreConnected", "False", "CoreUnreachable", "cannot reach")
    update = core_status(4, 2, first, findings(connected=down, engine=None), T1)
    assert update.status is not None
    assert update.status["core"] == {
        "state": "Unreachable",
        "designName": "Hall",
        "platform": "Core 110f",
        "lastSeen": T0,
    }
    assert [(t, r) for t, r, _ in update.events] == [("Warning", "CoreNotConnected")]
    assert "CoreConnected is False (CoreUnreachable)" in update.events[0][2]


def test_service_monitor_skipped_event_once() -> None:
    note = "ServiceMonitor not created"
    first = core_status(1, 2, {}, findings(service_monitor_note=note), T0)
    assert ("Normal", "ServiceMonitorSkipped", note) in first.events
    assert first.status is not None
    again = core_status(1, 2, first.status, findings(service_monitor_note=note), T1)
    assert all(r != "ServiceMonitorSkipped" for _, r, _ in again.events)


def test_invalid_core() -> None:
    update = invalid_core_status(7, {}, "core.host: bad", T0)
    assert update.status is not None
    assert update.status["observedGeneration"] == 7
    [ready, stalled] = update.status["conditions"]
    assert (stalled["type"], stalled["status"], stalled["reason"]) == (
        "Stalled",
        "True",
        "InvalidSpec",
    )
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
        "False",
        "InvalidSpec",
        7,
    )
    assert "fix the spec: core.host: bad" in ready["message"]
    assert update.events[0][:2] == ("Warning", "InvalidSpec")


def pfound(**kw: Any) -> PolicyFindings:
    base: dict[str, Any] = {
        "core_ref": "hall",
        "namespace": "av",
        "subjects": 2,
        "bound_core": "hall",
        "token_secrets": {"b": "ops-b-token", "a": "ops-a-token"},
    }
    return PolicyFindings(**{**base, **kw})


def test_policy_rendered() -> None:
    update = policy_status("ops", 3, {}, pfound(), T0)
    assert update.status is not None
    assert conds(update.status) == {"Ready": ("True", "Rendered"), "Bound": ("True", "CoreFound")}
    assert update.status["tokenSecrets"] == {"a": "ops-a-token", "b": "ops-b-token"}
    assert list(update.status["tokenSecrets"]) == ["a", "b"]
    assert "2 subject(s) active" in update.status["conditions"][0]["message"]
    again = policy_status("ops", 3, update.status, pfound(), T1)
    assert again.status is None
    assert again.events == []


def test_policy_core_not_found() -> None:
    update = policy_status("ops", 1, {}, pfound(bound_core=None), T0)
    assert update.status is not None
    assert conds(update.status) == {
        "Ready": ("False", "CoreNotFound"),
        "Bound": ("False", "CoreNotFound"),
    }
    assert "QSysCore hall not found in namespace av" in update.status["conditions"][0]["message"]


def test_policy_subject_conflict_only_for_the_losing_policy() -> None:
    conflict = SubjectConflict("panel", "ops", "older", "duplicate-name")
    update = policy_status("ops", 1, {}, pfound(conflicts=[conflict]), T0)
    assert update.status is not None
    ready = update.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "SubjectConflict")
    assert "subject panel left out: duplicate-name (kept by AccessPolicy older)" in ready["message"]
    other = policy_status("older", 1, {}, pfound(conflicts=[conflict]), T0)
    assert other.status is not None
    assert other.status["conditions"][0]["reason"] == "Rendered"


def test_policy_token_problem() -> None:
    update = policy_status("ops", 1, {}, pfound(token_problems={"a": "Secret x not found"}), T0)
    assert update.status is not None
    ready = update.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "TokenProblem")
    assert ready["message"] == "subject a: Secret x not found"
    assert update.events[0][:2] == ("Warning", "TokenProblem")


def test_secret_not_accepted_condition_and_event() -> None:
    problem = (
        "Secret db (spec.core.credentialsSecretRef) is not marked for this use: its owner must "
        "label it qsys.dev/secret-type=core-credentials; its data was not read"
    )
    update = core_status(2, 2, {}, findings(secret_problem=problem), T0)
    assert update.status is not None
    assert conds(update.status)["SecretsAccepted"] == ("False", "SecretNotAccepted")
    assert conds(update.status)["Ready"] == ("False", "SecretNotAccepted")
    warnings = [m for t, r, m in update.events if t == "Warning" and r == "SecretNotAccepted"]
    [warning] = warnings  # Ready and SecretsAccepted, one Event
    assert warning.count("Secret db") == 2
    assert "SecretsAccepted is False (SecretNotAccepted)" in warning
    assert "qsys.dev/secret-type=core-credentials" in warning


def test_policy_not_rendered_when_the_core_has_no_usable_token_key() -> None:
    why = (
        "QSysCore hall is not rendered: Secret hall-gateway-token-key exists but was not generated"
    )
    update = policy_status("ops", 1, {}, pfound(not_rendered=why), T0)
    assert update.status is not None
    ready = update.status["conditions"][0]
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "NotRendered", why)


def test_policy_status_names_service_account_subjects_and_drops_changed_ones() -> None:
    """A subject moved from a token to a ServiceAccount leaves tokenSecrets (null in the merge
    patch) and shows its Kubernetes user in serviceAccounts; moved back, the reverse."""
    user = "system:serviceaccount:jobs:scheduler"
    token = pfound(token_secrets={"a": "ops-a-token", "b": "ops-b-token"})
    first = policy_status("ops", 1, {}, token, T0)
    assert first.status is not None
    moved = pfound(token_secrets={"a": "ops-a-token"}, service_accounts={"b": user})
    update = policy_status("ops", 2, first.status, moved, T1)
    assert update.status is not None
    assert update.status["tokenSecrets"] == {"a": "ops-a-token", "b": None}
    assert update.status["serviceAccounts"] == {"b": user}
    stored = {**update.status, "tokenSecrets": {"a": "ops-a-token"}}
    assert policy_status("ops", 2, stored, moved, T1).status is None
    back = policy_status("ops", 3, stored, token, T1)
    assert back.status is not None
    assert back.status["serviceAccounts"] == {"b": None}
    assert back.status["tokenSecrets"] == {"a": "ops-a-token", "b": "ops-b-token"}


def test_secret_problem_is_stalled_and_ready_ones_carry_no_kstatus_conditions() -> None:
    """kstatus: Stalled=True (Failed) for what needs a human; Reconciling and Stalled are
    absent when not True; neither posts an Event of its own."""
    bad = core_status(2, 2, {}, findings(secret_problem="Secret db cannot be used"), T0)
    assert bad.status is not None
    assert conds(bad.status)["Stalled"] == ("True", "SecretNotAccepted")
    assert "Reconciling" not in conds(bad.status)
    assert all(not m.startswith("Stalled") for _, _, m in bad.events)
    fixed = core_status(2, 2, bad.status, findings(), T1)
    assert fixed.status is not None
    assert set(conds(fixed.status)) == {
        "Ready",
        "GatewayAvailable",
        "CoreConnected",
        "SecretsAccepted",
    }


def test_a_rollout_is_reconciling_while_ready_stays_true() -> None:
    rolling = Replicas(2, 2, rolling_out="1 of 2 gateway replicas updated")
    update = core_status(3, 2, {}, findings(replicas=rolling), T0)
    assert update.status is not None
    assert conds(update.status)["Ready"] == ("True", "Ready")
    assert conds(update.status)["Reconciling"] == ("True", "GatewayRollingOut")
    assert all(r != "GatewayRollingOut" for _, r, _ in update.events)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((3, 2, 2, 2, 2), "the Deployment controller has not observed the new gateway spec yet"),
        ((3, 3, 2, 3, 1), "1 of 2 gateway replicas updated"),
        ((3, 3, 2, 3, 2), "1 old gateway replica(s) pending termination"),
        ((3, 3, 2, 2, 2), None),
        ((3, 3, 0, None, None), None),
    ],
)
def test_rollout_progress(
    args: tuple[int, int, int, int | None, int | None], expected: str | None
) -> None:
    assert rollout_progress(*args) == expected


@pytest.mark.parametrize(
    ("kw", "stalled"),
    [
        ({"token_problems": {"a": "Secret x not found"}}, "TokenProblem"),
        ({"not_rendered": "QSysCore hall is not rendered"}, "NotRendered"),
        ({"bound_core": None}, None),
        ({}, None),
    ],
)
def test_policy_stalled_only_for_what_needs_a_change(
    kw: dict[str, Any], stalled: str | None
) -> None:
    update = policy_status("ops", 1, {}, pfound(**kw), T0)
    assert update.status is not None
    got = conds(update.status).get("Stalled")
    assert got == (("True", stalled) if stalled else None)
