"""Authorisation of QRC calls against AccessPolicy rules (semantics: docs/policy.md).

Deny by default: a call passes when, for every target it touches, some rule of
the subject allows that target. Globs are compiled once per config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fnmatch import translate
from typing import Any

from pydantic import BaseModel

from qsys_protocol.config import Rule, SubjectConfig
from qsys_protocol.qrc.errors import QrcError
from qsys_protocol.qrc.methods import (
    METHODS,
    ChangeGroupAddComponentControlParams,
    ChangeGroupAddControlParams,
    ChangeGroupRemoveParams,
    ComponentGetParams,
    ComponentRef,
    ComponentSetParams,
    ControlGetParams,
    ControlSetParams,
    ControlWrite,
    SnapshotLoadParams,
    SnapshotSaveParams,
    parse_params,
    traits_of,
)


@dataclass(frozen=True, slots=True)
class OutOfRange:
    """A write refused for its value alone: some rule names the control, none allows
    the value; `low`..`high` is the widest `valueRange` of those rules (None: open)."""

    component: str
    control: str
    value: Any
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    targets: tuple[str, ...]
    values: tuple[Any, ...]
    write: bool
    out_of_range: OutOfRange | None = None


def _compile(globs: Sequence[str]) -> re.Pattern[str]:
    return re.compile("|".join(translate(g) for g in globs))


_GLOB = re.compile(r"[*?\[]")


def _matches_everything(glob: str) -> bool:
    return bool(glob) and set(glob) == {"*"}


@dataclass(frozen=True, slots=True)
class _Rule:
    index: int
    methods: re.Pattern[str]
    exact_methods: frozenset[str]
    components: re.Pattern[str]
    controls: re.Pattern[str]
    named_controls: bool  # some component glob matches "" (the component of a Named Control)
    all_controls: bool  # some control glob matches every name
    ranged: bool
    low: float | None
    high: float | None
    literal_components: tuple[str, ...]  # the component names that are no glob

    @classmethod
    def build(cls, index: int, rule: Rule) -> _Rule:
        components = _compile(rule.components)
        vr = rule.valueRange
        return cls(
            index=index,
            methods=_compile(rule.methods),
            exact_methods=frozenset(rule.methods),
            components=components,
            controls=_compile(rule.controls),
            named_controls=components.match("") is not None,
            all_controls=any(_matches_everything(g) for g in rule.controls),
            ranged=vr is not None,
            low=vr.min if vr is not None else None,
            high=vr.max if vr is not None else None,
            literal_components=tuple(c for c in rule.components if not _GLOB.search(c)),
        )

    def value_ok(
        self, write: ControlSetParams | ControlWrite | None, control_type: str | None = None
    ) -> bool:
        """Judge the value the Core will apply (docs/policy.md, "Value ranges").

        A Core applies a boolean Value as 1.0 / 0.0, so a boolean is judged as that
        number, except on a control of type Boolean (its whole domain is 0/1: a mute
        passes a range meant for gains). Unknown type: judged as the number, so only
        what is provably in range passes."""
        if not self.ranged or write is None:
            return True
        if write.Position is not None or write.String is not None:
            return False  # cannot be range-checked
        value = write.Value
        if isinstance(value, bool):
            if control_type in BOOLEAN_TYPES:
                return True
            value = 1.0 if value else 0.0
        if not isinstance(value, int | float):
            return False
        if control_type in BOOLEAN_TYPES and value in (0, 1):
            return True
        if self.low is not None and value < self.low:
            return False
        return not (self.high is not None and value > self.high)


COMPONENT_READS = ("Component.Get", "Component.GetControls")
"""Methods that read a component's controls; a rule for one of them on a component
is what lists that component in `Component.GetComponents` (docs/policy.md)."""

BOOLEAN_TYPES = frozenset({"Boolean"})
"""`Type` values of `Component.GetControls` whose controls hold only 0 and 1."""


def describe(method: str, raw: Any) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """The targets and written values of a call, for the audit line of a call refused
    before authorisation (rate limit); ((), ()) when its params do not validate."""
    if method not in METHODS:
        return (), ()
    try:
        params = parse_params(method, raw)
    except QrcError:
        return (), ()
    if isinstance(params, ComponentSetParams):
        return (
            tuple(_target(params.Name, c.Name) for c in params.Controls),
            tuple(_written(c) for c in params.Controls),
        )
    if isinstance(params, ControlSetParams):
        return (params.Name,), (_written(params),)
    if isinstance(params, ComponentGetParams):
        return tuple(_target(params.Name, c.Name) for c in params.Controls), ()
    if isinstance(params, ChangeGroupAddComponentControlParams):
        comp = params.Component
        return tuple(_target(comp.Name, c.Name) for c in comp.Controls), ()
    if isinstance(params, ControlGetParams):
        return tuple(params.root), ()
    if isinstance(params, ChangeGroupAddControlParams | ChangeGroupRemoveParams):
        return tuple(params.Controls), ()
    if isinstance(params, SnapshotLoadParams | SnapshotSaveParams):
        return (params.Name,), ({"Bank": params.Bank},)
    if isinstance(params, ComponentRef):
        return (params.Name,), ()
    return (), ()


def needs_control_types(method: str, params: Any) -> str | None:
    """The component whose control types judging `params` needs: a Component.Set
    writing a boolean (judged differently on Boolean controls). None otherwise."""
    if method != "Component.Set" or not isinstance(params, ComponentSetParams):
        return None
    if any(isinstance(c.Value, bool) for c in params.Controls):
        return params.Name
    return None


def _written(write: ControlSetParams | ControlWrite) -> Any:
    """What goes into the audit `values`: the Value, or {"Position": ..} / {"String": ..}."""
    if write.Value is not None:
        return write.Value
    if write.Position is not None:
        return {"Position": write.Position}
    return {"String": write.String}


READ_MEMO_SIZE = 1024
"""Read decisions a subject's policy remembers (`_SubjectPolicy.reads`); emptied when full."""
READ_MEMO_NAMES = 32
"""Reads naming more controls than this are judged afresh each time (not remembered)."""


class _SubjectPolicy:
    __slots__ = ("_by_method", "reads", "rules")

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(_Rule.build(i, r) for i, r in enumerate(rules))
        self._by_method: dict[str, tuple[_Rule, ...]] = {}
        self.reads: dict[tuple[str, ...], Decision] = {}
        """Decisions on reads (`Control.Get`, `Component.Get`) by the names they read: a
        read's decision depends on nothing else, and panels poll the same few."""

    def rules_for(self, method: str) -> tuple[_Rule, ...]:
        """Rules whose `methods` allow `method`: globs for modelled methods, exact otherwise."""
        cached = self._by_method.get(method)
        if cached is not None:
            return cached
        if method in METHODS:
            found = tuple(r for r in self.rules if r.methods.match(method))
            self._by_method[method] = found
            return found
        return tuple(r for r in self.rules if method in r.exact_methods)


def _target(component: str, control: str) -> str:
    return f"{component}.{control}" if component else control


class Policy:
    """Per-subject compiled rules; build a new one on every config reload."""

    def __init__(self, subjects: Sequence[SubjectConfig]) -> None:
        self._subjects = {s.name: _SubjectPolicy(s.rules) for s in subjects}

    def authorize(
        self,
        subject: str,
        method: str,
        params: BaseModel | Any | None,
        control_types: Mapping[str, str] | None = None,
    ) -> Decision:
        """The decision for one call (raw params are validated first). `control_types`
        (control name -> Core `Type`) of the component written, when known; see
        `needs_control_types`."""
        spec = METHODS.get(method)
        traits = traits_of(method)
        write = traits.write
        compiled = self._subjects.get(subject)
        if compiled is None:
            return Decision(False, "unknown subject", (), (), write)
        rules = compiled.rules_for(method)
        if spec is None:
            if rules:
                return Decision(True, f"allowed by rule {rules[0].index}", (), (), write)
            return Decision(False, f"no rule allows method {method[:64]}", (), (), write)
        if spec.params is not None and not isinstance(params, spec.params):
            try:
                params = parse_params(method, params)
            except QrcError:
                return Decision(False, "invalid params", (), (), write)
        if not rules:
            return Decision(False, f"no rule allows method {method}", (), (), write)
        key = _read_key(method, params)
        if key is not None:
            decision = compiled.reads.get(key)
            if decision is None:
                decision = _check(method, params, rules, write, {})
                if len(compiled.reads) >= READ_MEMO_SIZE:
                    compiled.reads.clear()
                compiled.reads[key] = decision
            return decision
        decision = _check(method, params, rules, write, control_types or {})
        if decision.allowed and traits.group_add:
            return self._require_read(subject, params, decision)
        return decision

    def _require_read(self, subject: str, params: Any, decision: Decision) -> Decision:
        """A change group delivers values, so adding a control also needs read permission."""
        if isinstance(params, ChangeGroupAddComponentControlParams):
            component = params.Component.Name
            names = [c.Name for c in params.Component.Controls]
        elif isinstance(params, ChangeGroupAddControlParams):
            component, names = "", list(params.Controls)
        else:
            return decision
        for name in names:
            if not self.can_read(subject, component, name):
                target = _target(component, name)
                return replace(decision, allowed=False, reason=f"no rule allows reading {target}")
        return decision

    def can_read(self, subject: str, component: str, control: str) -> bool:
        """Whether `subject` may read one control: what its rules for `Component.Get`
        (or `Control.Get` for a Named Control, component "") allow. Change-group adds and
        every poll or push of a value are checked with this (docs/changegroups.md)."""
        compiled = self._subjects.get(subject)
        if compiled is None:
            return False
        if component:
            return any(
                r.components.match(component) and r.controls.match(control)
                for r in compiled.rules_for("Component.Get")
            )
        return any(
            r.named_controls and r.controls.match(control)
            for r in compiled.rules_for("Control.Get")
        )

    def has_rule_for(self, subject: str, method: str) -> bool:
        """Whether some rule of `subject` names `method` (targets aside)."""
        compiled = self._subjects.get(subject)
        return compiled is not None and bool(compiled.rules_for(method))

    def component_readable(self, subject: str, component: str) -> bool:
        """Whether some rule of `subject` for a read method on components
        (`COMPONENT_READS`) names `component`: the components it is shown."""
        compiled = self._subjects.get(subject)
        return compiled is not None and any(
            r.components.match(component)
            for method in COMPONENT_READS
            for r in compiled.rules_for(method)
        )

    def component_writable(self, subject: str, component: str) -> bool:
        """Whether some `Component.Set` rule of `subject` names `component`."""
        compiled = self._subjects.get(subject)
        return compiled is not None and any(
            r.components.match(component) for r in compiled.rules_for("Component.Set")
        )

    def names_component(self, subject: str, component: str) -> bool:
        """Whether `subject` may read or write `component` at all: what its design (the
        Core's list of its controls) may be looked up for."""
        return self.component_readable(subject, component) or self.component_writable(
            subject, component
        )

    def visible_components(self, subject: str, components: Any) -> Any:
        """`Component.GetComponents`' answer cut to what `subject` may read
        (`component_readable`), whatever transport asked; a new list, the Core's
        answer is shared. Anything but a list of named components passes unchanged."""
        if not isinstance(components, list):
            return components
        return [
            c
            for c in components
            if isinstance(c, dict)
            and isinstance(name := c.get("Name"), str)
            and self.component_readable(subject, name)
        ]

    def write_range(
        self, subject: str, component: str, control: str
    ) -> tuple[bool, float | None, float | None]:
        """Whether some `Component.Set` rule lets `subject` write the control, and the
        widest `valueRange` those rules allow (None: unbounded on that side)."""
        compiled = self._subjects.get(subject)
        if compiled is None:
            return (False, None, None)
        return _widest(compiled.rules_for("Component.Set"), component, control)

    def literal_components(self, subject: str, method: str) -> list[str]:
        """The component names (globs left out) of the subject's rules for `method`, in
        rule order: e.g. the snapshots it may load, to offer by name."""
        compiled = self._subjects.get(subject)
        if compiled is None:
            return []
        names = (n for r in compiled.rules_for(method) for n in r.literal_components)
        return list(dict.fromkeys(names))


def _widest(
    rules: Sequence[_Rule], component: str, control: str
) -> tuple[bool, float | None, float | None]:
    """Whether some of `rules` names the control, and the widest range they allow."""
    found = False
    low: float | None = None
    high: float | None = None
    unbounded_low = unbounded_high = False
    for r in rules:
        if not (r.components.match(component) and r.controls.match(control)):
            continue
        found = True
        unbounded_low |= r.low is None
        unbounded_high |= r.high is None
        if r.low is not None:
            low = r.low if low is None else min(low, r.low)
        if r.high is not None:
            high = r.high if high is None else max(high, r.high)
    return (found, None if unbounded_low else low, None if unbounded_high else high)


def _read_key(method: str, params: Any) -> tuple[str, ...] | None:
    """What a read's decision depends on (method, component, control names); None for
    anything else, or a read of many controls."""
    if method == "Control.Get" and isinstance(params, ControlGetParams):
        names = params.root
        if len(names) <= READ_MEMO_NAMES:
            return (method, "", *names)
    elif (
        method == "Component.Get"
        and isinstance(params, ComponentGetParams)
        and len(params.Controls) <= READ_MEMO_NAMES
    ):
        return (method, params.Name, *(c.Name for c in params.Controls))
    return None


def _check(
    method: str,
    params: Any,
    rules: tuple[_Rule, ...],
    write: bool,
    control_types: Mapping[str, str],
) -> Decision:
    if isinstance(params, ComponentSetParams):
        return _controls(params.Name, params.Controls, rules, True, control_types)
    if isinstance(params, ControlSetParams):
        return _controls("", [params], rules, True)
    if isinstance(params, ComponentGetParams):
        return _controls(params.Name, params.Controls, rules, False)
    if isinstance(params, ChangeGroupAddComponentControlParams):
        return _controls(params.Component.Name, params.Component.Controls, rules, False)
    if isinstance(params, ControlGetParams):
        return _named(params.root, rules, write)
    if isinstance(params, ChangeGroupAddControlParams | ChangeGroupRemoveParams):
        return _named(params.Controls, rules, write)
    if isinstance(params, ComponentRef) and method == "Component.GetControls":
        for r in rules:
            if r.all_controls and r.components.match(params.Name):
                return Decision(True, f"allowed by rule {r.index}", (params.Name,), (), write)
        return Decision(
            False,
            f"no rule allows every control of component {params.Name}",
            (params.Name,),
            (),
            write,
        )
    if isinstance(params, SnapshotLoadParams | SnapshotSaveParams):
        values: tuple[Any, ...] = ({"Bank": params.Bank},)
        for r in rules:
            if r.components.match(params.Name):
                return Decision(True, f"allowed by rule {r.index}", (params.Name,), values, write)
        return Decision(
            False, f"no rule allows snapshot {params.Name}", (params.Name,), values, write
        )
    # Method match only: NoOp, StatusGet, Component.GetComponents, ChangeGroup.Poll/...
    return Decision(True, f"allowed by rule {rules[0].index}", (), (), write)


def _controls(
    component: str,
    controls: Sequence[Any],
    rules: tuple[_Rule, ...],
    write: bool,
    control_types: Mapping[str, str] | None = None,
) -> Decision:
    """Every control of one component (or Named Controls when component is "")."""
    if component:
        candidates = tuple(r for r in rules if r.components.match(component))
    else:
        candidates = tuple(r for r in rules if r.named_controls)
    targets = tuple(_target(component, c.Name) for c in controls)
    values: tuple[Any, ...] = tuple(_written(c) for c in controls) if write else ()
    first_rule = -1
    for target, control in zip(targets, controls, strict=True):
        name = control.Name
        w = control if write else None
        ctype = control_types.get(name) if control_types else None
        for r in candidates:
            if r.controls.match(name) and r.value_ok(w, ctype):
                if first_rule < 0:
                    first_rule = r.index
                break
        else:
            return Decision(
                False,
                f"no rule allows {target}",
                targets,
                values,
                write,
                _out_of_range(component, control, candidates) if write else None,
            )
    return Decision(True, f"allowed by rule {first_rule}", targets, values, write)


def _out_of_range(component: str, write: Any, rules: Sequence[_Rule]) -> OutOfRange | None:
    """Why a write that some rule names was refused: its value (None when no rule
    names it, or the value is no number)."""
    value = write.Value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    named, low, high = _widest(rules, component, write.Name)
    if not named:
        return None
    return OutOfRange(component, write.Name, value, low, high)


def _named(names: Sequence[str], rules: tuple[_Rule, ...], write: bool) -> Decision:
    candidates = tuple(r for r in rules if r.named_controls)
    targets = tuple(names)
    first_rule = -1
    for name in targets:
        for r in candidates:
            if r.controls.match(name):
                if first_rule < 0:
                    first_rule = r.index
                break
        else:
            return Decision(False, f"no rule allows {name}", targets, (), write)
    return Decision(True, f"allowed by rule {first_rule}", targets, (), write)
