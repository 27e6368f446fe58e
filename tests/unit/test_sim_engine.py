"""The simulator's pure state machine: values, clamping, change groups, snapshots."""

from __future__ import annotations

from typing import Any

import pytest

from qsys_core_sim.design import Design, load_design
from qsys_core_sim.engine import Engine, Session, format_number
from qsys_protocol.qrc.errors import ErrorCode, QrcError
from qsys_protocol.qrc.methods import METHODS, parse_params


@pytest.fixture
def engine() -> Engine:
    return Engine(load_design(), max_change_groups=3)


@pytest.fixture
def session(engine: Engine) -> Session:
    return engine.open_session()


def call(engine: Engine, session: Session, method: str, params: Any = None) -> Any:
    result = engine.call(session, method, parse_params(method, params))
    METHODS[method].result.validate_python(result)
    return result


def error(engine: Engine, session: Session, method: str, params: Any = None) -> QrcError:
    with pytest.raises(QrcError) as info:
        call(engine, session, method, params)
    return info.value


@pytest.mark.parametrize(
    ("value", "expected", "string", "position"),
    [
        (-6, -6.0, "-6.00dB", 0.0),
        (500, 0.0, "0dB", 1.0),
        (-1000, -100.0, "-100dB", 0.0),
    ],
)
def test_float_clamped_to_range(
    engine: Engine, session: Session, value: float, expected: float, string: str, position: float
) -> None:
    call(engine, session, "Control.Set", {"Name": "LobbyMusicLevel", "Value": value})
    (state,) = call(engine, session, "Control.Get", ["LobbyMusicLevel"])
    assert state["Value"] == expected
    assert state["String"] == string
    if value != -6:
        assert state["Position"] == position
    else:
        assert state["Position"] == pytest.approx(0.94)


def test_integer_boolean_and_text_writes(engine: Engine, session: Session) -> None:
    comp = "Room101 Router"
    call(
        engine,
        session,
        "Component.Set",
        {"Name": comp, "Controls": [{"Name": "select.1", "Value": 2.6}]},
    )
    assert engine.find_control("select.1", comp).value == 3
    call(
        engine,
        session,
        "Component.Set",
        {"Name": comp, "Controls": [{"Name": "select.1", "Value": 99}]},
    )
    assert engine.find_control("select.1", comp).value == 4
    call(engine, session, "Control.Set", {"Name": "LobbyMusicOn", "String": "off"})
    assert engine.find_control("LobbyMusicOn").state() == {
        "Name": "LobbyMusicOn",
        "Value": 0,
        "String": "false",
        "Position": 0.0,
    }
    call(engine, session, "Control.Set", {"Name": "MainGain", "Position": 0.5})
    assert engine.find_control("MainGain").value == -40.0
    call(engine, session, "Control.Set", {"Name": "MainGain", "String": "-12dB"})
    assert engine.find_control("MainGain").value == -12.0
    call(engine, session, "Control.Set", {"Name": "WelcomeText", "Value": "Hi"})
    assert engine.find_control("WelcomeText").string == "Hi"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"Name": "FireAlarmActive", "Value": 1}, ErrorCode.INVALID_PARAMS),
        ({"Name": "WelcomeText", "Value": 1}, ErrorCode.INVALID_PARAMS),
        ({"Name": "MainGain", "Value": "loud"}, ErrorCode.INVALID_PARAMS),
        ({"Name": "MainGain", "String": "loud"}, ErrorCode.INVALID_PARAMS),
        ({"Name": "Nope", "Value": 1}, ErrorCode.UNKNOWN_CONTROL),
    ],
)
def test_control_set_errors(engine: Engine, session: Session, params: Any, code: int) -> None:
    assert error(engine, session, "Control.Set", params).code == code


def test_component_set_is_all_or_nothing(engine: Engine, session: Session) -> None:
    comp = "Room101 Zone1 Gain"
    before = engine.find_control("gain", comp).value
    err = error(
        engine,
        session,
        "Component.Set",
        {"Name": comp, "Controls": [{"Name": "gain", "Value": 5}, {"Name": "nope", "Value": 1}]},
    )
    assert err.code == ErrorCode.UNKNOWN_CONTROL
    assert engine.find_control("gain", comp).value == before


def test_trigger_fires_and_resets(engine: Engine, session: Session) -> None:
    comp = "Room101 Status"
    call(
        engine,
        session,
        "ChangeGroup.AddComponentControl",
        {"Id": "t", "Component": {"Name": comp, "Controls": [{"Name": "reboot"}]}},
    )
    call(engine, session, "ChangeGroup.Poll", {"Id": "t"})
    call(
        engine,
        session,
        "Component.Set",
        {"Name": comp, "Controls": [{"Name": "reboot", "Value": 1}]},
    )
    changes = call(engine, session, "ChangeGroup.Poll", {"Id": "t"})["Changes"]
    assert changes == [
        {"Name": "reboot", "Component": comp, "Value": 0, "String": "", "Position": 0.0}
    ]


def test_change_group_limit_counts_every_session(engine: Engine) -> None:
    a, b = engine.open_session(), engine.open_session()
    call(engine, a, "ChangeGroup.AddControl", {"Id": 1, "Controls": ["MainGain"]})
    call(engine, a, "ChangeGroup.AddControl", {"Id": 2, "Controls": ["MainGain"]})
    call(engine, b, "ChangeGroup.AddControl", {"Id": 1, "Controls": ["MainGain"]})
    assert engine.change_group_count == 3
    err = error(engine, b, "ChangeGroup.AddControl", {"Id": 2, "Controls": ["MainGain"]})
    assert err.code == ErrorCode.CHANGE_GROUPS_EXHAUSTED
    # Adding to an existing group still works at the limit.
    call(engine, b, "ChangeGroup.AddControl", {"Id": 1, "Controls": ["MainMute"]})
    engine.close_session(a)
    call(engine, b, "ChangeGroup.AddControl", {"Id": 2, "Controls": ["MainGain"]})
    assert engine.change_group_count == 2


def test_snapshot_bank_errors(engine: Engine, session: Session) -> None:
    assert error(engine, session, "Snapshot.Save", {"Name": "Nope", "Bank": 1}).code == 7
    err = error(engine, session, "Snapshot.Save", {"Name": "Venue Scenes", "Bank": 5})
    assert err.code == ErrorCode.INVALID_PARAMS
    err = error(engine, session, "Snapshot.Load", {"Name": "Venue Scenes", "Bank": 5})
    assert err.code == ErrorCode.INVALID_PARAMS


def test_loading_a_snapshot_never_saved_changes_nothing(engine: Engine, session: Session) -> None:
    before = {key: c.state() for key, c in _all_controls(engine)}
    assert call(engine, session, "Snapshot.Load", {"Name": "Venue Scenes", "Bank": 2}) is True
    assert {key: c.state() for key, c in _all_controls(engine)} == before


def _all_controls(engine: Engine) -> list[tuple[tuple[str, str], Any]]:
    return [((comp, name), c) for comp, cs in engine.components.items() for name, c in cs.items()]


def test_boolean_strings_follow_the_control_kind_by_default() -> None:
    design = Design.model_validate(
        {
            "name": "kinds",
            "components": [
                {
                    "name": "G",
                    "controls": [
                        {"name": n, "type": "Boolean"}
                        for n in ("mute", "input.1.mute", "invert", "bypass", "enable")
                    ]
                    + [{"name": "custom", "type": "Boolean", "strings": ["off", "on"]}],
                }
            ],
        }
    )
    engine = Engine(design)
    strings = {n: (c.strings[0], c.strings[1]) for n, c in engine.components["G"].items()}
    assert strings == {
        "mute": ("unmuted", "muted"),
        "input.1.mute": ("unmuted", "muted"),
        "invert": ("normal", "inverted"),
        "bypass": ("no", "yes"),
        "enable": ("false", "true"),
        "custom": ("off", "on"),
    }
    assert engine.components["G"]["mute"].state()["String"] == "unmuted"
    s = engine.open_session()
    engine.call(
        s,
        "Component.Set",
        parse_params(
            "Component.Set", {"Name": "G", "Controls": [{"Name": "mute", "String": "muted"}]}
        ),
    )
    assert engine.components["G"]["mute"].state()["String"] == "muted"


def test_unknown_change_group_reads_as_a_core_answers_it(engine: Engine, session: Session) -> None:
    err = error(engine, session, "ChangeGroup.Poll", {"Id": "lost"})
    assert (err.code, err.message) == (6, "Change group 'lost' does not exist")


def test_snapshot_restores_only_its_components(engine: Engine, session: Session) -> None:
    zone = ("gain", "Room101 Zone1 Gain")
    mixer = ("input.1.gain", "Room101 Mixer")
    engine.set_value(engine.find_control(*zone), -30)
    engine.set_value(engine.find_control(*mixer), -30)
    call(engine, session, "Snapshot.Save", {"Name": "Room Presets", "Bank": 3})
    engine.set_value(engine.find_control(*zone), 5)
    engine.set_value(engine.find_control(*mixer), 5)
    call(engine, session, "Snapshot.Load", {"Name": "Room Presets", "Bank": 3})
    assert engine.find_control(*zone).value == -30.0
    assert engine.find_control(*mixer).value == 5.0


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (-100, "-100"),
        (20, "20.0"),
        (-10, "-10.0"),
        (0, "0"),
        (-6.5, "-6.50"),
        (41.5, "41.5"),
        (9.996, "10.0"),
        (-0.25, "-0.250"),
        (123.4, "123"),
    ],
)
def test_numbers_read_as_a_core_formats_them(value: float, text: str) -> None:
    assert format_number(value) == text


def test_control_set_answers_with_the_control_state(engine: Engine, session: Session) -> None:
    assert call(engine, session, "Control.Set", {"Name": "MainGain", "Value": 20}) == {
        "Name": "MainGain",
        "Value": 20.0,
        "String": "20.0dB",
        "Position": 1.0,
    }
    state = call(engine, session, "Control.Set", {"Name": "MainGain", "Position": 0.5})
    assert (state["Value"], state["Position"]) == (-40.0, 0.5)


def test_boolean_strings_follow_the_control_kind(engine: Engine, session: Session) -> None:
    (mute,) = call(engine, session, "Control.Get", ["MainMute"])
    assert (mute["Value"], mute["String"]) == (0, "unmuted")
    assert (
        call(engine, session, "Control.Set", {"Name": "MainMute", "String": "muted"})["String"]
        == "muted"
    )
    controls = call(engine, session, "Component.GetControls", {"Name": "Room101 Zone1 Gain"})
    by_name = {c["Name"]: c for c in controls["Controls"]}
    assert by_name["invert"]["String"] == "normal"
    assert by_name["bypass"]["String"] == "no"
    assert (by_name["mute"]["StringMin"], by_name["mute"]["StringMax"]) == ("unmuted", "muted")
    assert by_name["gain"]["StringMin"] == "-100dB"
    (custom,) = call(engine, session, "Control.Get", ["LobbyMusicOn"])
    assert custom["String"] == "true"


def test_combo_box_carries_its_choices(engine: Engine, session: Session) -> None:
    comp = "Room101 Status"
    controls = call(engine, session, "Component.GetControls", {"Name": comp})
    source = next(c for c in controls["Controls"] if c["Name"] == "source")
    assert source["Choices"] == ["Mic", "HDMI", "Bluetooth", "Off"]
    assert source["String"] == "Mic"
    call(
        engine,
        session,
        "Component.Set",
        {"Name": comp, "Controls": [{"Name": "source", "String": "HDMI"}]},
    )
    assert engine.find_control("source", comp).string == "HDMI"
    err = error(
        engine,
        session,
        "Component.Set",
        {"Name": comp, "Controls": [{"Name": "source", "String": "VGA"}]},
    )
    assert err.code == ErrorCode.INVALID_PARAMS


def test_status_and_components_in_the_core_shape(engine: Engine, session: Session) -> None:
    status = call(engine, session, "StatusGet")
    assert status["Status"] == {"Code": 0, "String": "OK"}
    assert set(engine.engine_status()) == {
        "State",
        "DesignName",
        "DesignCode",
        "IsRedundant",
        "IsEmulator",
    }
    (first, *_) = call(engine, session, "Component.GetComponents")
    assert first["ID"] == first["Name"]
    assert (first["Controls"], first["ControlSource"]) == (None, 2)


def test_component_set_response_values_is_a_list_of_changes(
    engine: Engine, session: Session
) -> None:
    comp = "Room101 Zone1 Gain"
    result = call(
        engine,
        session,
        "Component.Set",
        {"Name": comp, "Controls": [{"Name": "gain", "Value": -10}], "ResponseValues": True},
    )
    assert result == [
        {"Component": comp, "Name": "gain", "String": "-10.0dB", "Value": -10.0, "Position": 0.75}
    ]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ramp_moves_over_time_and_change_groups_see_it() -> None:
    clock = FakeClock()
    engine = Engine(load_design(), clock=clock)
    session = engine.open_session()
    call(engine, session, "ChangeGroup.AddControl", {"Id": "r", "Controls": ["MainGain"]})
    call(engine, session, "Control.Set", {"Name": "MainGain", "Value": -100})
    call(engine, session, "ChangeGroup.Poll", {"Id": "r"})
    started = call(engine, session, "Control.Set", {"Name": "MainGain", "Value": 0, "Ramp": 2})
    assert started["Value"] == -100.0  # the ramp has only begun
    clock.now += 1.0
    (half,) = call(engine, session, "Control.Get", ["MainGain"])
    assert half["Value"] == pytest.approx(-50.0)
    assert half["String"] == "-50.0dB"
    clock.now += 0.5
    (changed,) = call(engine, session, "ChangeGroup.Poll", {"Id": "r"})["Changes"]
    assert changed["Value"] == pytest.approx(-25.0)
    clock.now += 5
    (done,) = call(engine, session, "ChangeGroup.Poll", {"Id": "r"})["Changes"]
    assert (done["Value"], done["String"]) == (0.0, "0dB")
    assert call(engine, session, "ChangeGroup.Poll", {"Id": "r"})["Changes"] == []


def test_a_new_write_cancels_a_ramp() -> None:
    clock = FakeClock()
    engine = Engine(load_design(), clock=clock)
    session = engine.open_session()
    call(engine, session, "Control.Set", {"Name": "LobbyMusicLevel", "Value": -100})
    call(engine, session, "Control.Set", {"Name": "LobbyMusicLevel", "Value": 0, "Ramp": 10})
    clock.now += 1
    call(engine, session, "Control.Set", {"Name": "LobbyMusicLevel", "Value": -60})
    clock.now += 20
    (state,) = call(engine, session, "Control.Get", ["LobbyMusicLevel"])
    assert state["Value"] == -60.0
