"""The design a simulated Core runs: components, their controls, Named Controls, snapshots.

Loaded from YAML (`--design FILE`) or the built-in `default_design.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

ControlType = Literal["Boolean", "Integer", "Float", "Text", "Trigger", "Time"]
Direction = Literal["Read/Write", "Read Only", "Write Only"]
Name = Annotated[str, Field(min_length=1, max_length=256)]


BOOLEAN_KINDS: tuple[tuple[str, tuple[str, str]], ...] = (
    ("mute", ("unmuted", "muted")),
    ("invert", ("normal", "inverted")),
    ("bypass", ("no", "yes")),
)
"""A Boolean control's Strings (off, on) by a word in its name, as a Designer emulator
reports them for the Gain component's `mute`, `invert` and `bypass`."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ControlDef(_Model):
    name: Name
    type: ControlType = "Float"
    value: int | float | str = 0.0
    min: float = 0.0
    max: float = 1.0
    units: str = ""
    direction: Direction = "Read/Write"
    strings: tuple[Name, Name] | None = None
    """A Boolean's String when off and on. Unset: by the control's kind, read from its
    name as a Core's components name them: a mute (`mute`, `input.1.mute`, `GainMute`)
    reads `unmuted`/`muted`, an invert `normal`/`inverted`, a bypass `no`/`yes`, any
    other toggle `false`/`true`."""
    choices: Annotated[list[Name], Field(max_length=1024)] | None = None
    """A combo box: a Text control whose String is one of these (reported as `Choices`)."""

    @property
    def boolean_strings(self) -> tuple[str, str]:
        if self.strings is not None:
            return self.strings
        name = self.name.lower()
        return next((s for kind, s in BOOLEAN_KINDS if kind in name), ("false", "true"))

    @model_validator(mode="after")
    def _check_range(self) -> ControlDef:
        if self.type == "Boolean":
            self.min, self.max = 0.0, 1.0
        if self.type in ("Text", "Trigger"):
            self.min, self.max = 0.0, 0.0 if self.type == "Text" else 1.0
        if self.min > self.max:
            raise ValueError(f"control {self.name}: min is greater than max")
        if self.type == "Text" and not isinstance(self.value, str):
            self.value = str(self.value)
        if self.type != "Text" and isinstance(self.value, str):
            raise ValueError(f"control {self.name}: value must be a number")
        if self.choices is not None:
            if self.type != "Text":
                raise ValueError(f"control {self.name}: only Text controls have choices")
            if self.value not in self.choices:
                raise ValueError(f"control {self.name}: value is not one of its choices")
        return self


class ComponentDef(_Model):
    name: Name
    type: str = "custom"
    properties: dict[str, str] = Field(default_factory=dict)
    controls: list[ControlDef]

    @model_validator(mode="after")
    def _unique_controls(self) -> ComponentDef:
        names = [c.name for c in self.controls]
        if len(names) != len(set(names)):
            raise ValueError(f"component {self.name}: duplicate control names")
        return self


class NamedControlDef(ControlDef):
    """A Named Control: either a control of its own or an alias of a component's control."""

    component: Name | None = None
    control: Name | None = None

    @model_validator(mode="after")
    def _alias_complete(self) -> NamedControlDef:
        if (self.component is None) != (self.control is None):
            raise ValueError(f"named control {self.name}: set both component and control")
        return self


class SnapshotDef(_Model):
    name: Name
    banks: Annotated[int, Field(ge=1, le=1000)] = 8
    components: list[Name] | None = None


class Design(_Model):
    name: Name = "Simulated Design"
    code: str = "sim0000000000"
    platform: str = "Core 110f"
    redundant: bool = False
    components: list[ComponentDef] = Field(default_factory=list)
    namedControls: list[NamedControlDef] = Field(default_factory=list)
    snapshots: list[SnapshotDef] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Design:
        comps = {c.name: c for c in self.components}
        if len(comps) != len(self.components):
            raise ValueError("duplicate component names")
        names = [n.name for n in self.namedControls]
        if len(names) != len(set(names)):
            raise ValueError("duplicate named control names")
        for nc in self.namedControls:
            if nc.component is None:
                continue
            comp = comps.get(nc.component)
            if comp is None or nc.control not in {c.name for c in comp.controls}:
                raise ValueError(f"named control {nc.name}: no control {nc.component}.{nc.control}")
        for snap in self.snapshots:
            for cname in snap.components or []:
                if cname not in comps:
                    raise ValueError(f"snapshot {snap.name}: unknown component {cname}")
        return self


def load_design(path: str | Path | None = None) -> Design:
    """Load a design file, or the built-in default design when `path` is None."""
    if path is None:
        text = (Path(__file__).parent / "default_design.yaml").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    return Design.model_validate(data)
