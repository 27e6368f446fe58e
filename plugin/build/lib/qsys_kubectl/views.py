"""Pure parts of `kubectl qsys`: status summaries, can-i targets and audit filtering.

No Kubernetes client here: the functions take the objects the API returned
(plain dicts) and give what the commands print, so they are unit-tested alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qsys_gateway.policy import Decision, Policy
from qsys_protocol.config import SubjectConfig


class PluginError(Exception):
    """A failure the user can act on; printed as `error: ...`, exit code 2."""


def _conditions(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((obj.get("status") or {}).get("conditions") or [])


def condition_status(obj: Mapping[str, Any], type_: str) -> str:
    for cond in _conditions(obj):
        if cond.get("type") == type_:
            return str(cond.get("status", "Unknown"))
    return "Unknown"


def _not_true(obj: Mapping[str, Any]) -> list[str]:
    return [
        f"{c.get('type')}={c.get('status')}({c.get('reason', '')})"
        for c in _conditions(obj)
        if c.get("status") != "True"
    ]


def core_summary(core: Mapping[str, Any], policies: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One QSysCore at a glance: gateways, Core state, subjects and conditions."""
    meta, spec = core.get("metadata") or {}, core.get("spec") or {}
    status = core.get("status") or {}
    gateway, core_status = status.get("gateway") or {}, status.get("core") or {}
    bound = [
        p
        for p in policies
        if ((p.get("spec") or {}).get("coreRef") or {}).get("name") == meta.get("name")
    ]
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "host": (spec.get("core") or {}).get("host"),
        "ready": condition_status(core, "Ready"),
        "gateways": {
            "ready": gateway.get("readyReplicas") or 0,
            "desired": (spec.get("gateway") or {}).get("replicas", 2),
            "service": gateway.get("service"),
            "serviceAccountAudience": gateway.get("serviceAccountAudience"),
        },
        "core": {
            "state": core_status.get("state"),
            "designName": core_status.get("designName"),
            "platform": core_status.get("platform"),
            "lastSeen": core_status.get("lastSeen"),
        },
        "subjects": status.get("subjects") or 0,
        "policies": [
            {
                "name": (p.get("metadata") or {}).get("name"),
                "subjects": [s.get("name") for s in (p.get("spec") or {}).get("subjects") or []],
                "ready": condition_status(p, "Ready"),
                "tokensInGrace": dict((p.get("status") or {}).get("tokensInGrace") or {}),
                "serviceAccounts": dict((p.get("status") or {}).get("serviceAccounts") or {}),
                "problems": _not_true(p),
            }
            for p in sorted(bound, key=lambda p: str((p.get("metadata") or {}).get("name")))
        ],
        "conditions": [
            {k: c.get(k) for k in ("type", "status", "reason", "message")}
            for c in _conditions(core)
        ],
        "problems": _not_true(core),
    }


STATUS_COLUMNS = ("CORE", "READY", "GATEWAYS", "CORE STATE", "DESIGN", "SUBJECTS", "POLICIES")


def status_rows(summaries: Iterable[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for s in summaries:
        policies = ", ".join(
            p["name"] + ("" if p["ready"] == "True" else f"({p['ready']})") for p in s["policies"]
        )
        rows.append(
            [
                str(s["name"]),
                str(s["ready"]),
                f"{s['gateways']['ready']}/{s['gateways']['desired']}",
                str(s["core"]["state"] or "-"),
                str(s["core"]["designName"] or "-"),
                str(s["subjects"]),
                policies or "-",
            ]
        )
    return rows


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """kubectl's plain table: upper-case header, columns padded with three spaces."""
    widths = [max(len(r[i]) for r in [list(header), *rows]) for i in range(len(header))]
    lines = [
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


# ---- can-i ------------------------------------------------------------------------------


def _value(text: str) -> Any:
    """A VALUE argument: JSON when it parses (1, -6.5, true), else the text itself."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, bool | int | float | str) else text


def _write(value: Any) -> dict[str, Any]:
    return {"String": value} if isinstance(value, str) else {"Value": value}


def call_params(method: str, target: str | None, value: str | None) -> Any:
    """QRC params of METHOD for `COMPONENT[.CONTROL] [VALUE]`.

    Component methods split the target at its first dot (component, control); Control
    methods take it whole as a Named Control's name.
    """
    if not target:
        return {}
    component, _, control = target.partition(".")
    parsed = _value(value) if value is not None else None
    if method == "Control.Get":
        return [target]
    if method == "Control.Set":
        return {"Name": target, **_write(parsed if value is not None else 0)}
    if method in ("ChangeGroup.AddControl", "ChangeGroup.Remove"):
        return {"Id": "kubectl-qsys", "Controls": [target]}
    if method in ("Component.GetControls",):
        return {"Name": component}
    if method in ("Snapshot.Load", "Snapshot.Save"):
        return {"Name": target, "Bank": parsed if isinstance(parsed, int) else 1}
    if not control:
        raise PluginError(f"{method} needs COMPONENT.CONTROL, got {target!r}")
    if method == "Component.Get":
        return {"Name": component, "Controls": [{"Name": control}]}
    if method == "Component.Set":
        write = _write(parsed if value is not None else 0)
        return {"Name": component, "Controls": [{"Name": control, **write}]}
    if method == "ChangeGroup.AddComponentControl":
        return {
            "Id": "kubectl-qsys",
            "Component": {"Name": component, "Controls": [{"Name": control}]},
        }
    return {}


def can_i(subject: SubjectConfig, method: str, params: Any) -> Decision:
    """The gateway's own decision (qsys_gateway.policy) for one call of `subject`."""
    return Policy([subject]).authorize(subject.name, method, params)


# ---- audit ------------------------------------------------------------------------------


def audit_lines(
    lines: Iterable[str], *, subject: str | None = None, pod: str | None = None
) -> Iterator[dict[str, Any]]:
    """The gateway's audit records (`"type": "audit"` JSON lines) among a pod's log lines."""
    for line in lines:
        text = line.strip()
        if not text.startswith("{"):
            continue
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("type") != "audit":
            continue
        if subject is not None and record.get("subject") != subject:
            continue
        if pod is not None:
            record = {**record, "pod": pod}
        yield record


def merge_by_time(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Audit records of several pods in one timeline: by `ts` (UTC ISO 8601 with
    milliseconds, so text order is time order), each pod's own order kept on ties."""
    return sorted(records, key=lambda r: str(r.get("ts", "")))


AUDIT_COLUMNS = ("TIME", "SUBJECT", "METHOD", "TARGETS", "DECISION", "OUTCOME", "REASON")


def audit_row(record: Mapping[str, Any]) -> list[str]:
    return [
        str(record.get("ts", "")),
        str(record.get("subject", "")),
        str(record.get("method", "")),
        ",".join(str(t) for t in record.get("targets") or []) or "-",
        str(record.get("decision", "")),
        str(record.get("outcome", "")),
        str(record.get("reason", "")),
    ]


@dataclass(frozen=True)
class Endpoint:
    pod: str
    ip: str
