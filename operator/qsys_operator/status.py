"""metav1.Conditions: lastTransitionTime moves only with the status; transitions become Events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Cond:
    type: str
    status: Status
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Transition:
    type: str
    old: str | None
    new: Cond


def merge_conditions(
    old: list[dict[str, Any]], new: list[Cond], generation: int | None, stamp: str
) -> tuple[list[dict[str, Any]], list[Transition]]:
    """The new conditions (ordered as given) and the ones whose status changed."""
    previous = {c.get("type"): c for c in old}
    out: list[dict[str, Any]] = []
    transitions: list[Transition] = []
    for cond in new:
        before = previous.get(cond.type)
        changed = before is None or before.get("status") != cond.status
        entry: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": stamp
            if changed or before is None
            else before["lastTransitionTime"],
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
        if changed:
            transitions.append(
                Transition(cond.type, before.get("status") if before else None, cond)
            )
    return out, transitions


def event_type(t: Transition) -> str:
    return "Normal" if t.new.status == "True" else "Warning"


def event_message(t: Transition) -> str:
    text = f"{t.type} is {t.new.status} ({t.new.reason})"
    return f"{text}: {t.new.message}" if t.new.message else text
