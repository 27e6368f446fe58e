"""The simulated Core's state machine: controls, change groups, snapshots.

Pure and synchronous: `Engine.call()` takes a method and validated params and
returns the Core's result or raises `QrcError`. Sockets, timers and faults live
in `server.py`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from qsys_protocol.qrc import methods as m
from qsys_protocol.qrc.errors import ErrorCode, QrcError, unknown_change_group

from .design import ComponentDef, ControlDef, Design

MAX_CHANGE_GROUPS = 512


def format_number(value: float) -> str:
    """A number as a Core displays it: three significant digits, and zero as `0`.

    A Designer emulator answers `-100dB`, `20.0dB`, `-10.0dB` and `0dB` (recorded in the
    vendor's QRC help and public clients' emulator tests), which is this rule."""
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, 2 - magnitude)
    if abs(round(value, decimals)) >= 10 ** (magnitude + 1):
        decimals = max(0, decimals - 1)  # rounding carried into the next digit (9.996 -> 10.0)
    return f"{value:.{decimals}f}"


@dataclass(slots=True)
class _Ramp:
    start: float
    target: float
    began: float
    seconds: float


class Control:
    """One control of the running design; Named Controls may alias a component's control."""

    __slots__ = (
        "choices",
        "component",
        "direction",
        "max",
        "min",
        "name",
        "position",
        "ramp",
        "string",
        "strings",
        "type",
        "units",
        "value",
        "version",
    )

    def __init__(self, definition: ControlDef, component: str | None) -> None:
        self.component = component
        self.name = definition.name
        self.type = definition.type
        self.min = definition.min
        self.max = definition.max
        self.units = definition.units
        self.direction = definition.direction
        self.strings = definition.boolean_strings
        self.choices = definition.choices
        self.value: float | int | str = 0
        self.string = ""
        self.position = 0.0
        self.version = 0
        self.ramp: _Ramp | None = None
        self._assign(definition.value)

    @property
    def key(self) -> tuple[str | None, str]:
        return (self.component, self.name)

    @property
    def rampable(self) -> bool:
        return self.type in ("Float", "Integer", "Time")

    def state(self) -> dict[str, Any]:
        return {
            "Name": self.name,
            "Value": self.value,
            "String": self.string,
            "Position": self.position,
        }

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "Name": self.name,
            "Type": self.type,
            "Value": self.value,
            "ValueMin": self._number(self.min),
            "ValueMax": self._number(self.max),
            "StringMin": self._render(self.min),
            "StringMax": self._render(self.max),
            "String": self.string,
            "Position": self.position,
            "Direction": self.direction,
        }
        if self.choices is not None:
            info["Choices"] = list(self.choices)
        return info

    def _number(self, v: float) -> int | float:
        return int(v) if self.type in ("Integer", "Boolean", "Trigger") else v

    def _render(self, v: float) -> str:
        if self.type == "Boolean":
            return self.strings[1] if v else self.strings[0]
        if self.type == "Integer":
            return f"{int(v)}{self.units}"
        if self.type in ("Text", "Trigger"):
            return ""
        return f"{format_number(v)}{self.units}"

    def _assign(self, raw: float | str) -> None:
        if self.type == "Text":
            self.value, self.string, self.position = 0, str(raw), 0.0
            return
        v = min(max(float(raw), self.min), self.max)
        if self.type in ("Integer", "Boolean", "Trigger"):
            v = round(v)
        self.value = int(v) if self.type in ("Integer", "Boolean", "Trigger") else v
        self.string = self._render(v)
        span = self.max - self.min
        self.position = (v - self.min) / span if span else 0.0

    def coerce(self, write: m._ValueWrite) -> float | str:
        """The new raw value for a write, or -32602 when it does not fit the control type."""
        if self.type == "Text":
            if write.String is not None:
                text = write.String
            elif isinstance(write.Value, str):
                text = write.Value
            else:
                raise QrcError(
                    ErrorCode.INVALID_PARAMS, f"Invalid params: {self.name} takes a string"
                )
            if self.choices is not None and text not in self.choices:
                raise QrcError(
                    ErrorCode.INVALID_PARAMS, f"Invalid params: not one of {self.name}'s Choices"
                )
            return text
        if write.Value is not None:
            if isinstance(write.Value, str):
                raise QrcError(
                    ErrorCode.INVALID_PARAMS, f"Invalid params: {self.name} takes a number"
                )
            return float(write.Value)
        if write.Position is not None:
            return self.min + write.Position * (self.max - self.min)
        assert write.String is not None
        text = write.String.strip().lower()
        if self.type == "Boolean":
            words = {"true": 1.0, "on": 1.0, "false": 0.0, "off": 0.0}
            words.update({self.strings[0].lower(): 0.0, self.strings[1].lower(): 1.0})
            if text in words:
                return words[text]
        if self.units and text.endswith(self.units.lower()):
            text = text[: -len(self.units)]
        try:
            return float(text)
        except ValueError:
            raise QrcError(
                ErrorCode.INVALID_PARAMS, f"Invalid params: cannot read a value for {self.name}"
            ) from None

    def write(self, raw: float | str, version: int) -> bool:
        """Apply a coerced value; returns whether the control changed."""
        before = (self.value, self.string)
        self._assign(raw)
        if self.type == "Trigger":
            self.value, self.string, self.position = 0, "", 0.0
            self.version = version
            return True
        if (self.value, self.string) != before:
            self.version = version
            return True
        return False


@dataclass(slots=True)
class ChangeGroup:
    id: str | int
    # (component or None for a Named Control, reported name) -> [control, last version delivered]
    entries: dict[tuple[str | None, str], list[Any]] = field(default_factory=dict)

    def add(self, control: Control, component: str | None, name: str) -> None:
        self.entries.setdefault((component, name), [control, -1])

    def remove(self, component: str | None, name: str) -> None:
        self.entries.pop((component, name), None)

    def poll(self) -> list[dict[str, Any]]:
        changes: list[dict[str, Any]] = []
        for (component, name), entry in self.entries.items():
            control: Control = entry[0]
            if control.version > entry[1]:
                state = control.state()
                state["Name"] = name
                if component is not None:
                    state["Component"] = component
                changes.append(state)
                entry[1] = control.version
        return changes

    def invalidate(self) -> None:
        for entry in self.entries.values():
            entry[1] = -1


class Session:
    """Per-connection state: logon and the change groups this connection owns."""

    def __init__(self) -> None:
        self.logged_on = False
        self.change_groups: dict[str, ChangeGroup] = {}


@dataclass(slots=True)
class _Snapshot:
    banks: int
    controls: list[Control]
    saved: dict[int, list[float | str]] = field(default_factory=dict)


Handler = Callable[[Session, Any], Any]


class Engine:
    """`clock` (seconds, monotonic) drives ramps: a ramping control's value is brought up
    to date whenever a call or a poll reads the engine, so no timer is needed."""

    def __init__(
        self,
        design: Design,
        *,
        max_change_groups: int = MAX_CHANGE_GROUPS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.design = design
        self.clock = clock
        self._ramping: set[Control] = set()
        self.state = "Active"
        self.max_change_groups = max_change_groups
        self.polls = 0  # change-group polls served (explicit and AutoPoll)
        self._versions = itertools.count(1)
        self.components: dict[str, dict[str, Control]] = {}
        self._component_defs: dict[str, ComponentDef] = {c.name: c for c in design.components}
        for comp in design.components:
            self.components[comp.name] = {c.name: Control(c, comp.name) for c in comp.controls}
        self.named: dict[str, Control] = {}
        for nc in design.namedControls:
            if nc.component is not None and nc.control is not None:
                self.named[nc.name] = self.components[nc.component][nc.control]
            else:
                self.named[nc.name] = Control(nc, None)
        self.snapshots: dict[str, _Snapshot] = {}
        for snap in design.snapshots:
            names = snap.components if snap.components is not None else list(self.components)
            controls = [
                c for n in names for c in self.components[n].values() if c.type != "Trigger"
            ]
            self.snapshots[snap.name] = _Snapshot(snap.banks, controls)
        self.sessions: set[Session] = set()
        self._handlers: dict[str, Handler] = {
            "NoOp": lambda s, p: True,
            "StatusGet": lambda s, p: self.status(),
            "Control.Get": self._control_get,
            "Control.Set": self._control_set,
            "Component.GetComponents": lambda s, p: self._get_components(),
            "Component.GetControls": self._get_controls,
            "Component.Get": self._component_get,
            "Component.Set": self._component_set,
            "ChangeGroup.AddControl": self._cg_add_control,
            "ChangeGroup.AddComponentControl": self._cg_add_component_control,
            "ChangeGroup.Remove": self._cg_remove,
            "ChangeGroup.Poll": lambda s, p: self.poll(s, p.Id),
            "ChangeGroup.Invalidate": self._cg_invalidate,
            "ChangeGroup.Clear": self._cg_clear,
            "ChangeGroup.Destroy": self._cg_destroy,
            "Snapshot.Load": self._snapshot_load,
            "Snapshot.Save": self._snapshot_save,
        }

    # ---- public API -------------------------------------------------------

    @property
    def change_group_count(self) -> int:
        return sum(len(s.change_groups) for s in self.sessions)

    def status(self) -> dict[str, Any]:
        """The StatusGet result."""
        return {
            "Platform": self.design.platform,
            **self.engine_status(),
            "Status": {"Code": 0, "String": "OK"},
        }

    def engine_status(self) -> dict[str, Any]:
        """The params of a pushed EngineStatus (the vendor's help lists exactly these)."""
        return {
            "State": self.state,
            "DesignName": self.design.name,
            "DesignCode": self.design.code,
            "IsRedundant": self.design.redundant,
            "IsEmulator": True,
        }

    def open_session(self) -> Session:
        session = Session()
        self.sessions.add(session)
        return session

    def close_session(self, session: Session) -> None:
        session.change_groups.clear()
        self.sessions.discard(session)

    def call(self, session: Session, method: str, params: BaseModel | None) -> Any:
        handler = self._handlers.get(method)
        if handler is None:
            raise QrcError(ErrorCode.METHOD_NOT_FOUND, f"Method not found: {method[:64]}")
        self.advance_ramps()
        return handler(session, params)

    def poll(self, session: Session, group_id: str | int) -> dict[str, Any]:
        group = self.group(session, group_id)
        return {"Id": group.id, "Changes": self.poll_group(group)}

    def poll_group(self, group: ChangeGroup) -> list[dict[str, Any]]:
        """A poll (explicit or AutoPoll): what changed since the group's previous poll."""
        self.advance_ramps()
        self.polls += 1
        return group.poll()

    def advance_ramps(self) -> None:
        """Move every ramping control to where its ramp is now."""
        if not self._ramping:
            return
        now = self.clock()
        for control in list(self._ramping):
            ramp = control.ramp
            assert ramp is not None
            done = (now - ramp.began) / ramp.seconds
            if done >= 1.0:
                self._stop_ramp(control)
                control.write(ramp.target, next(self._versions))
            else:
                raw = ramp.start + (ramp.target - ramp.start) * max(0.0, done)
                control.write(raw, next(self._versions))

    def find_control(self, name: str, component: str | None = None) -> Control:
        if component is None:
            control = self.named.get(name)
            if control is None:
                raise QrcError(ErrorCode.UNKNOWN_CONTROL, f"Unknown control: {name[:64]}")
            return control
        controls = self.components.get(component)
        if controls is None:
            raise QrcError(ErrorCode.UNKNOWN_COMPONENT, f"Unknown component: {component[:64]}")
        control = controls.get(name)
        if control is None:
            raise QrcError(ErrorCode.UNKNOWN_CONTROL, f"Unknown control: {name[:64]}")
        return control

    def set_value(self, control: Control, raw: float | str, ramp: float | None = None) -> bool:
        """Change a control as someone at the Core would (no direction check); with `ramp`
        seconds a numeric control moves there linearly, starting now."""
        self._stop_ramp(control)
        if ramp and ramp > 0 and control.rampable and not isinstance(raw, str):
            start = float(control.value)
            target = min(max(float(raw), control.min), control.max)
            if target != start:
                control.ramp = _Ramp(start, target, self.clock(), ramp)
                self._ramping.add(control)
                return False
        return control.write(raw, next(self._versions))

    def _stop_ramp(self, control: Control) -> None:
        if control.ramp is not None:
            control.ramp = None
            self._ramping.discard(control)

    # ---- handlers -----------------------------------------------------------

    def _writable(self, control: Control) -> Control:
        if control.direction == "Read Only":
            raise QrcError(ErrorCode.INVALID_PARAMS, f"Invalid params: {control.name} is read-only")
        return control

    def _control_get(self, session: Session, p: m.ControlGetParams) -> list[dict[str, Any]]:
        states = []
        for name in p.root:
            state = self.find_control(name).state()
            state["Name"] = name
            states.append(state)
        return states

    def _control_set(self, session: Session, p: m.ControlSetParams) -> dict[str, Any]:
        """A Designer emulator answers with the control's state (a ramp has only begun)."""
        control = self._writable(self.find_control(p.Name))
        self.set_value(control, control.coerce(p), p.Ramp)
        state = control.state()
        state["Name"] = p.Name
        return state

    def _get_components(self) -> list[dict[str, Any]]:
        return [
            {
                "ID": c.name,
                "Name": c.name,
                "Type": c.type,
                "Properties": [
                    {"Name": k, "Value": v, "PrettyName": k} for k, v in c.properties.items()
                ],
                "Controls": None,
                "ControlSource": 2,
            }
            for c in self._component_defs.values()
        ]

    def _get_controls(self, session: Session, p: m.ComponentRef) -> dict[str, Any]:
        controls = self.components.get(p.Name)
        if controls is None:
            raise QrcError(ErrorCode.UNKNOWN_COMPONENT, f"Unknown component: {p.Name[:64]}")
        return {"Name": p.Name, "Controls": [c.info() for c in controls.values()]}

    def _component_get(self, session: Session, p: m.ComponentGetParams) -> dict[str, Any]:
        return {
            "Name": p.Name,
            "Controls": [self.find_control(c.Name, p.Name).state() for c in p.Controls],
        }

    def _component_set(self, session: Session, p: m.ComponentSetParams) -> Any:
        plan = []
        for write in p.Controls:
            control = self._writable(self.find_control(write.Name, p.Name))
            plan.append((control, control.coerce(write)))
        for (control, raw), write in zip(plan, p.Controls, strict=True):
            self.set_value(control, raw, write.Ramp)
        if p.ResponseValues:
            return [
                {
                    "Component": p.Name,
                    "Name": c.name,
                    "String": c.string,
                    "Value": c.value,
                    "Position": c.position,
                }
                for c, _ in plan
            ]
        return True

    def group(self, session: Session, group_id: str | int) -> ChangeGroup:
        group = session.change_groups.get(str(group_id))
        if group is None:
            raise unknown_change_group(group_id)
        return group

    def _group_for_add(self, session: Session, group_id: str | int) -> ChangeGroup:
        group = session.change_groups.get(str(group_id))
        if group is None:
            if self.change_group_count >= self.max_change_groups:
                raise QrcError(ErrorCode.CHANGE_GROUPS_EXHAUSTED)
            group = session.change_groups[str(group_id)] = ChangeGroup(group_id)
        return group

    def _add(
        self, session: Session, group_id: str | int, component: str | None, names: Iterable[str]
    ) -> bool:
        resolved = [(self.find_control(name, component), name) for name in names]
        group = self._group_for_add(session, group_id)
        for control, name in resolved:
            group.add(control, component, name)
        return True

    def _cg_add_control(self, session: Session, p: m.ChangeGroupAddControlParams) -> bool:
        return self._add(session, p.Id, None, p.Controls)

    def _cg_add_component_control(
        self, session: Session, p: m.ChangeGroupAddComponentControlParams
    ) -> bool:
        comp = p.Component
        return self._add(session, p.Id, comp.Name, (c.Name for c in comp.Controls))

    def _cg_remove(self, session: Session, p: m.ChangeGroupRemoveParams) -> bool:
        group = self.group(session, p.Id)
        for name in p.Controls:
            group.remove(None, name)
        return True

    def _cg_invalidate(self, session: Session, p: m.ChangeGroupIdParams) -> bool:
        self.group(session, p.Id).invalidate()
        return True

    def _cg_clear(self, session: Session, p: m.ChangeGroupIdParams) -> bool:
        self.group(session, p.Id).entries.clear()
        return True

    def _cg_destroy(self, session: Session, p: m.ChangeGroupIdParams) -> bool:
        self.group(session, p.Id)
        del session.change_groups[str(p.Id)]
        return True

    def _snapshot(self, name: str, bank: int) -> _Snapshot:
        snap = self.snapshots.get(name)
        if snap is None:
            raise QrcError(ErrorCode.UNKNOWN_COMPONENT, f"Unknown snapshot: {name[:64]}")
        if bank > snap.banks:
            raise QrcError(
                ErrorCode.INVALID_PARAMS, f"Invalid params: {name} has {snap.banks} banks"
            )
        return snap

    def _snapshot_save(self, session: Session, p: m.SnapshotSaveParams) -> bool:
        snap = self._snapshot(p.Name, p.Bank)
        snap.saved[p.Bank] = [c.string if c.type == "Text" else c.value for c in snap.controls]
        return True

    def _snapshot_load(self, session: Session, p: m.SnapshotLoadParams) -> bool:
        """A snapshot never saved loads nothing and is no error: the vendor's QRC help
        defines no error for it (docs/simulator.md, "Snapshots")."""
        snap = self._snapshot(p.Name, p.Bank)
        values = snap.saved.get(p.Bank)
        if values is None:
            return True
        for control, raw in zip(snap.controls, values, strict=True):
            self.set_value(control, raw, p.Ramp)
        return True
