"""The Core's design as the MCP endpoint sees it: components and their controls, read by
the gateway itself (like the change-group hub) and cached per design, then filtered by a
subject's policy before anything reaches an agent."""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from qsys_protocol.qrc.methods import ComponentControlsResult, ComponentInfo

from ..policy import Policy

Fetch = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""One design look-up (`Component.GetComponents` / `Component.GetControls`) made on
behalf of a caller, through admission."""

MAX_CACHED_COMPONENTS = 4096
_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


@dataclass(frozen=True, slots=True)
class ControlSpec:
    name: str
    type: str
    direction: str
    low: float | None
    high: float | None
    units: str

    @property
    def readable(self) -> bool:
        return self.direction != "Write Only"

    @property
    def writable(self) -> bool:
        return self.direction != "Read Only"


def units_of(info: dict[str, Any]) -> str:
    """The unit suffix of the Core's rendered strings ("-100.0dB" -> "dB")."""
    for key in ("StringMin", "StringMax", "String"):
        text = info.get(key)
        if isinstance(text, str):
            m = _NUMBER.match(text)
            if m is not None:
                rest = text[m.end() :].strip()
                if rest and len(rest) <= 8 and not any(c.isdigit() for c in rest):
                    return rest
    return ""


def control_spec(info: dict[str, Any]) -> ControlSpec:
    ctype = str(info.get("Type", "Float"))
    numeric = ctype in ("Float", "Integer", "Time")
    low, high = info.get("ValueMin"), info.get("ValueMax")
    return ControlSpec(
        name=str(info.get("Name")),
        type=ctype,
        direction=str(info.get("Direction", "Read/Write")),
        low=float(low) if numeric and isinstance(low, int | float) else None,
        high=float(high) if numeric and isinstance(high, int | float) else None,
        units=units_of(info) if numeric else "",
    )


def effective_range(
    spec: ControlSpec, rule_low: float | None, rule_high: float | None
) -> tuple[float | None, float | None]:
    """The intersection of the Core's range and the rule's `valueRange`."""
    low, high = spec.low, spec.high
    if rule_low is not None:
        low = rule_low if low is None else max(low, rule_low)
    if rule_high is not None:
        high = rule_high if high is None else min(high, rule_high)
    return low, high


class Design:
    """Components (one call) and each component's controls (one call each, on first use),
    kept until the Core reports a different `DesignCode`."""

    def __init__(self, engine_status: Callable[[], dict[str, Any] | None]) -> None:
        self._engine_status = engine_status
        self._code: object = None
        self._components: list[ComponentInfo] | None = None
        self._controls: OrderedDict[str, dict[str, ControlSpec]] = OrderedDict()
        self._lock = asyncio.Lock()

    def _check_code(self) -> None:
        status = self._engine_status() or {}
        code = status.get("DesignCode")
        if code != self._code:
            self._code = code
            self._components = None
            self._controls.clear()

    async def components(self, fetch: Fetch) -> list[ComponentInfo]:
        self._check_code()
        if self._components is None:
            async with self._lock:
                if self._components is None:
                    raw = await fetch("Component.GetComponents", {})
                    items = raw if isinstance(raw, list) else []
                    self._components = [ComponentInfo.model_validate(c) for c in items]
        return self._components

    async def controls(self, component: str, fetch: Fetch) -> dict[str, ControlSpec]:
        """The controls of one component (raises the Core's error 7 for an unknown one)."""
        self._check_code()
        cached = self._controls.get(component)
        if cached is not None:
            self._controls.move_to_end(component)
            return cached
        raw = await fetch("Component.GetControls", {"Name": component})
        result = ComponentControlsResult.model_validate(raw)
        specs = {c.Name: control_spec(c.model_dump()) for c in result.Controls}
        self._controls[component] = specs
        while len(self._controls) > MAX_CACHED_COMPONENTS:
            self._controls.popitem(last=False)
        return specs


def readable(
    policy: Policy, subject: str, component: str, controls: dict[str, ControlSpec]
) -> list[ControlSpec]:
    return [
        c for c in controls.values() if c.readable and policy.can_read(subject, component, c.name)
    ]


Writable = list[tuple[ControlSpec, float | None, float | None]]
"""Controls a subject may write, each with its effective range."""


def writable(
    policy: Policy, subject: str, component: str, controls: dict[str, ControlSpec]
) -> Writable:
    out: Writable = []
    for c in controls.values():
        if not c.writable:
            continue
        ok, low, high = policy.write_range(subject, component, c.name)
        if ok:
            out.append((c, *effective_range(c, low, high)))
    return out
