"""The status of a QSysCore or an AccessPolicy, derived from what one reconcile found. Pure.

Each function answers the status to write (None when nothing but core.lastSeen
changed, which is not worth a write on its own) and the Events to post.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .render import SubjectConflict
from .status import Cond, event_message, event_type, merge_conditions

Event = tuple[str, str, str]
"""(type, reason, message) of a core/v1 Event."""


@dataclass(frozen=True)
class StatusUpdate:
    status: dict[str, Any] | None
    """The status to write; None when the stored one is already current."""
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class Replicas:
    """The gateway Deployment as read back: None when it does not exist."""

    available: int | None
    ready: int = 0
    rolling_out: str | None = None
    """What a rollout of the Deployment still waits for; None when it is complete."""


@dataclass(frozen=True)
class CoreFindings:
    """What a reconcile of one valid QSysCore found besides its spec."""

    gateway_name: str
    replicas: Replicas
    connected: Cond
    """CoreConnected, from the gateway's own view."""
    engine: dict[str, Any] | None = None
    """EngineStatus (State, DesignName, Platform) when a gateway is connected."""
    subjects: int = 0
    apply_error: str | None = None
    service_monitor_note: str | None = None
    secret_problem: str | None = None
    """A Secret the core names (credentials, or its token key) the operator may not use."""
    service_account_audience: str | None = None
    """The audience ServiceAccount tokens must carry (status.gateway)."""
    identity_note: str | None = None
    """Why gateways that review ServiceAccount tokens may not reach the API server."""
    egress_note: str | None = None
    """Endpoints (tracing, Redis) the NetworkPolicy does not let the gateways reach."""
    image_problem: str | None = None
    """spec.gateway.image is not on the platform's allow-list: nothing was applied."""
    name_conflict: str | None = None
    """Objects of the children's names that are not the core's (nothing was applied)."""


def rollout_progress(
    generation: int | None,
    observed: int | None,
    wanted: int,
    replicas: int | None,
    updated: int | None,
) -> str | None:
    """What a Deployment's rollout still waits for, as `kubectl rollout status` judges it
    (availability aside: GatewayAvailable says that); None when it is complete."""
    if generation is not None and (observed or 0) < generation:
        return "the Deployment controller has not observed the new gateway spec yet"
    if (updated or 0) < wanted:
        return f"{updated or 0} of {wanted} gateway replicas updated"
    if (replicas or 0) > (updated or 0):
        return f"{(replicas or 0) - (updated or 0)} old gateway replica(s) pending termination"
    return None


def gateway_condition(name: str, replicas: Replicas, wanted: int) -> Cond:
    if replicas.available is None:
        return Cond("GatewayAvailable", "False", "DeploymentMissing", f"{name} not found")
    if replicas.available >= 1:
        return Cond(
            "GatewayAvailable",
            "True",
            "ReplicasAvailable",
            f"{replicas.available}/{wanted} available",
        )
    return Cond("GatewayAvailable", "False", "NoReplicaAvailable", f"0/{wanted} available")


def secrets_condition(found: CoreFindings) -> Cond:
    if found.secret_problem:
        return Cond("SecretsAccepted", "False", "SecretNotAccepted", found.secret_problem)
    return Cond("SecretsAccepted", "True", "Accepted", "every Secret the core uses is allowed")


STALLED_CORE_REASONS = frozenset(
    {
        "InvalidSpec",
        "ApplyRejected",
        "ImageNotAllowed",
        "SecretNotAccepted",
        "NameConflict",
        "CoreLimitExceeded",
    }
)
"""Ready=False reasons of a QSysCore that no retry resolves: someone must change a spec,
a Secret or the platform's settings."""
STALLED_POLICY_REASONS = frozenset({"TokenProblem", "SubjectConflict", "NotRendered"})
"""The same for an AccessPolicy. CoreNotFound is not among them: a QSysCore synced
in the same pass appears a moment later."""


def kstatus_conditions(
    ready: Cond, stalled_reasons: frozenset[str], rolling_out: str | None = None
) -> list[Cond]:
    """The kstatus "abnormal-true" conditions beside Ready, present only while True:
    Stalled (kstatus Failed) for a problem that needs a human, Reconciling (InProgress)
    while the gateway rolls out. Flux health checks, `kubectl wait` and cli-utils read them."""
    if ready.status == "False" and ready.reason in stalled_reasons:
        return [Cond("Stalled", "True", ready.reason, ready.message)]
    if rolling_out:
        return [Cond("Reconciling", "True", "GatewayRollingOut", rolling_out)]
    return []


def ready_condition(found: CoreFindings, gateway: Cond) -> Cond:
    core = found.connected
    notes = [n for n in (found.identity_note, found.egress_note, found.service_monitor_note) if n]
    note = "".join(f"; {n}" for n in notes)
    if found.image_problem:
        return Cond("Ready", "False", "ImageNotAllowed", found.image_problem)
    if found.name_conflict:
        return Cond("Ready", "False", "NameConflict", found.name_conflict)
    if found.secret_problem:
        return Cond("Ready", "False", "SecretNotAccepted", found.secret_problem + note)
    if found.apply_error:
        return Cond("Ready", "False", "ApplyRejected", found.apply_error + note)
    if gateway.status != "True":
        return Cond("Ready", "False", "GatewayUnavailable", gateway.message + note)
    if core.status == "False" or (core.status == "Unknown" and core.reason != "ProbeDisabled"):
        return Cond("Ready", "False", "CoreNotConnected", core.message + note)
    return Cond("Ready", "True", "Ready", "gateway available and connected to the Core" + note)


KSTATUS_TYPES = frozenset({"Stalled", "Reconciling"})


def _events(transitions: Sequence[Any]) -> list[Event]:
    """Ready and the other conditions announce a change, at most one Event per type
    (Normal, Warning) and status write: its reason is the first transition's (Ready's
    when Ready changed), its message names every transition of that type in order. An
    Event per condition cost ten API calls on a core's way to Ready (with its policies),
    the largest share of the operator's calls. Stalled and Reconciling repeat Ready's
    reason or follow a rollout, so they post nothing."""
    grouped: dict[str, tuple[str, list[str]]] = {}
    for t in transitions:
        if t.type in KSTATUS_TYPES:
            continue
        grouped.setdefault(event_type(t), (t.new.reason, []))[1].append(event_message(t))
    return [(type_, reason, "; ".join(msgs)) for type_, (reason, msgs) in grouped.items()]


def core_status(
    generation: int | None,
    wanted_replicas: int,
    old: Mapping[str, Any],
    found: CoreFindings,
    stamp: str,
) -> StatusUpdate:
    gw_cond = gateway_condition(found.gateway_name, found.replicas, wanted_replicas)
    old_core = old.get("core") or {}
    core: dict[str, Any] = {
        "state": None,
        "designName": old_core.get("designName"),
        "platform": old_core.get("platform"),
        "lastSeen": old_core.get("lastSeen"),
    }
    if found.engine is not None:
        core = {
            "state": found.engine.get("State"),
            "designName": found.engine.get("DesignName"),
            "platform": found.engine.get("Platform"),
            "lastSeen": stamp,
        }
    elif found.connected.status == "False":
        core["state"] = "Unreachable"
    ready = ready_condition(found, gw_cond)
    conds, transitions = merge_conditions(
        old.get("conditions") or [],
        [
            ready,
            gw_cond,
            found.connected,
            secrets_condition(found),
            *kstatus_conditions(ready, STALLED_CORE_REASONS, found.replicas.rolling_out),
        ],
        generation,
        stamp,
    )
    status = {
        "observedGeneration": generation,
        "conditions": conds,
        "gateway": {
            "readyReplicas": found.replicas.ready,
            "service": found.gateway_name,
            "serviceAccountAudience": found.service_account_audience,
        },
        "core": core,
        "subjects": found.subjects,
    }
    events = _events(transitions)
    old_ready: Mapping[str, Any] = next(
        (c for c in old.get("conditions") or [] if c.get("type") == "Ready"), {}
    )
    note = found.service_monitor_note
    if note and note not in str(old_ready.get("message", "")):
        events.append(("Normal", "ServiceMonitorSkipped", note))
    conflict = found.name_conflict
    if (
        conflict
        and old_ready.get("reason") != "NameConflict"
        and ready.status == old_ready.get("status")
    ):
        # Ready was False already, so no transition Event announces the conflict.
        events.append(("Warning", "NameConflict", f"Ready is False (NameConflict): {conflict}"))
    changed = _without_seen(status) != _without_seen(old)
    return StatusUpdate(status if changed else None, events)


def invalid_core_status(
    generation: int | None, old: Mapping[str, Any], problem: str, stamp: str
) -> StatusUpdate:
    """A QSysCore the models refuse (the CRD schema should have): say what to fix."""
    ready = Cond("Ready", "False", "InvalidSpec", f"fix the spec: {problem}")
    conds, transitions = merge_conditions(
        old.get("conditions") or [],
        [ready, *kstatus_conditions(ready, STALLED_CORE_REASONS)],
        generation,
        stamp,
    )
    return StatusUpdate(
        {"observedGeneration": generation, "conditions": conds}, _events(transitions)
    )


def core_limit_problem(
    name: str, namespace: str, cores: Sequence[tuple[str, str]], limit: int
) -> str | None:
    """Why the core `name` is not rendered: it is not among the `limit` oldest of its
    namespace's `cores`, (creationTimestamp, name) pairs; ties go by name. The oldest
    keep their gateways whatever is created later."""
    order = sorted(cores)
    rank = next((i for i, (_, n) in enumerate(order) if n == name), len(order))
    if rank < limit:
        return None
    return (
        f"namespace {namespace} has {len(order)} QSysCores and the operator renders at most "
        f"{limit} per namespace (the platform's maxCoresPerNamespace); this one is not among "
        f"the {limit} oldest, so nothing of it is created: delete a QSysCore of the "
        "namespace or ask the platform team for a higher limit"
    )


def limited_core_status(
    generation: int | None, old: Mapping[str, Any], problem: str, stamp: str
) -> StatusUpdate:
    """A QSysCore beyond its namespace's core limit: observed, not rendered."""
    ready = Cond("Ready", "False", "CoreLimitExceeded", problem)
    conds, transitions = merge_conditions(
        old.get("conditions") or [],
        [ready, *kstatus_conditions(ready, STALLED_CORE_REASONS)],
        generation,
        stamp,
    )
    status = {"observedGeneration": generation, "conditions": conds}
    keys = ("observedGeneration", "conditions")
    changed = _strip_none(status) != _strip_none({k: old.get(k) for k in keys})
    return StatusUpdate(status if changed else None, _events(transitions))


@dataclass(frozen=True)
class PolicyFindings:
    core_ref: str
    namespace: str
    subjects: int
    bound_core: str | None
    """The QSysCore the policy is bound to; None when it does not exist."""
    conflicts: Sequence[SubjectConflict] = ()
    token_problems: Mapping[str, str] = field(default_factory=dict)
    """subject -> what to fix (never token text)."""
    token_secrets: Mapping[str, str] = field(default_factory=dict)
    service_accounts: Mapping[str, str] = field(default_factory=dict)
    """subject -> the Kubernetes user its pods authenticate as."""
    tokens_in_grace: Mapping[str, str] = field(default_factory=dict)
    """subject -> end of its previous token's grace period (RFC 3339)."""
    not_rendered: str | None = None
    """Why the bound core rendered no subject at all (its token key is unusable)."""


def policy_status(
    policy_name: str,
    generation: int | None,
    old: Mapping[str, Any],
    found: PolicyFindings,
    stamp: str,
) -> StatusUpdate:
    problems: list[str] = []
    if found.bound_core is None:
        bound = Cond(
            "Bound",
            "False",
            "CoreNotFound",
            f"QSysCore {found.core_ref} not found in namespace {found.namespace}; "
            "create it or fix spec.coreRef.name",
        )
    else:
        bound = Cond("Bound", "True", "CoreFound", f"bound to QSysCore {found.bound_core}")
        problems.extend(
            f"subject {c.subject} left out: {c.reason}: {c.detail}"
            if c.detail
            else f"subject {c.subject} left out: {c.reason} (kept by AccessPolicy {c.kept_by})"
            for c in found.conflicts
            if c.policy == policy_name
        )
    problems.extend(f"subject {s}: {msg}" for s, msg in sorted(found.token_problems.items()))
    if found.bound_core is None:
        ready = Cond("Ready", "False", "CoreNotFound", bound.message)
    elif found.not_rendered:
        ready = Cond("Ready", "False", "NotRendered", found.not_rendered)
    elif problems:
        reason = "SubjectConflict" if any("left out" in p for p in problems) else "TokenProblem"
        ready = Cond("Ready", "False", reason, "; ".join(problems))
    else:
        ready = Cond("Ready", "True", "Rendered", f"{found.subjects} subject(s) active")
    conds, transitions = merge_conditions(
        old.get("conditions") or [],
        [ready, bound, *kstatus_conditions(ready, STALLED_POLICY_REASONS)],
        generation,
        stamp,
    )
    status = {
        "observedGeneration": generation,
        "conditions": conds,
        # A merge patch: subjects gone, no longer of that kind, or whose grace period
        # ended are removed with null.
        "tokenSecrets": _replace_map(old.get("tokenSecrets"), found.token_secrets),
        "serviceAccounts": _replace_map(old.get("serviceAccounts"), found.service_accounts),
        "tokensInGrace": _replace_map(old.get("tokensInGrace"), found.tokens_in_grace),
    }
    keys = ("observedGeneration", "conditions", "tokenSecrets", "serviceAccounts", "tokensInGrace")
    changed = _strip_none(status) != _strip_none({k: old.get(k) for k in keys})
    return StatusUpdate(status if changed else None, _events(transitions))


def _replace_map(old: Mapping[str, Any] | None, new: Mapping[str, str]) -> dict[str, Any]:
    """A merge patch of a map that replaces old by new: old keys not in new become null."""
    return {k: None for k in old or {}} | dict(sorted(new.items()))


def _strip_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip_none(v) for k, v in value.items() if v is not None and v != {}}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def _without_seen(status: Mapping[str, Any]) -> Any:
    out = _strip_none(
        {
            k: status.get(k)
            for k in ("observedGeneration", "conditions", "gateway", "core", "subjects")
        }
    )
    if isinstance(out.get("core"), dict):
        out["core"] = {k: v for k, v in out["core"].items() if k != "lastSeen"}
    return out
