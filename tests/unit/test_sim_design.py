"""Design files: the built-in default, YAML files, and bad designs rejected with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from qsys_core_sim.design import Design, load_design
from qsys_core_sim.engine import Engine

GOOD = """
name: Test Room
code: T1
components:
  - name: Amp
    type: gain
    properties: {channels: '2'}
    controls:
      - {name: gain, type: Float, value: -10, min: -60, max: 10, units: dB}
      - {name: mute, type: Boolean, value: 1}
      - {name: label, type: Text, value: hello}
namedControls:
  - {name: AmpGain, component: Amp, control: gain}
  - {name: Level, type: Integer, value: 3, min: 0, max: 10}
snapshots:
  - {name: Scenes, banks: 2}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "design.yaml"
    path.write_text(text, "utf-8")
    return path


def test_default_design_is_built_in() -> None:
    design = load_design()
    assert design.name == "Demo Venue"
    assert len(design.components) >= 10
    names = {n.name for n in design.namedControls}
    assert {"MainGain", "MainMute", "LobbyMusicLevel", "WelcomeText"} <= names
    assert {s.name for s in design.snapshots} == {"Room Presets", "Venue Scenes"}
    Engine(design)  # every alias resolves


def test_yaml_file_is_loaded(tmp_path: Path) -> None:
    design = load_design(write(tmp_path, GOOD))
    assert design.name == "Test Room"
    assert design.code == "T1"
    assert design.components[0].properties == {"channels": "2"}
    engine = Engine(design)
    assert engine.find_control("AmpGain") is engine.find_control("gain", "Amp")
    assert engine.find_control("label", "Amp").string == "hello"
    assert engine.find_control("Level").value == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "components: [{name: A, controls: [{name: g, min: 5, max: 1}]}]",
            "min is greater than max",
        ),
        ("components: [{name: A, controls: [{name: g}, {name: g}]}]", "duplicate control names"),
        ("components: [{name: A, controls: []}, {name: A, controls: []}]", "duplicate component"),
        ("namedControls: [{name: N, component: Missing, control: g}]", "no control Missing.g"),
        ("namedControls: [{name: N, component: A}]", "set both component and control"),
        ("snapshots: [{name: S, components: [Nope]}]", "unknown component Nope"),
        ("components: [{name: A, controls: [{name: g, type: Float, value: loud}]}]", "number"),
        ("components: [{name: A, controls: [{name: g, type: Knob}]}]", "type"),
        ("components: [{name: A, colour: red, controls: []}]", "colour"),
    ],
)
def test_bad_designs_are_rejected_with_a_clear_error(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        load_design(write(tmp_path, text))


def test_invalid_yaml_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not valid YAML"):
        load_design(write(tmp_path, "components: [\n  - {name: A\n"))


def test_missing_design_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_design(tmp_path / "nope.yaml")


def test_boolean_and_text_ranges_are_normalised() -> None:
    design = Design.model_validate(
        {
            "components": [
                {
                    "name": "C",
                    "controls": [
                        {"name": "b", "type": "Boolean", "min": -5, "max": 5},
                        {"name": "t", "type": "Text", "value": 12},
                    ],
                }
            ]
        }
    )
    b, t = design.components[0].controls
    assert (b.min, b.max) == (0.0, 1.0)
    assert t.value == "12"


@pytest.mark.parametrize(
    ("control", "message"),
    [
        ({"name": "x", "type": "Float", "choices": ["a"]}, "only Text controls have choices"),
        ({"name": "x", "type": "Text", "value": "c", "choices": ["a", "b"]}, "not one of"),
        ({"name": "x", "type": "Boolean", "strings": ["off"]}, "strings"),
    ],
)
def test_bad_strings_and_choices_are_refused(control: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Design.model_validate({"components": [{"name": "C", "controls": [control]}]})
