"""The simulator's pure state machine: values, clamping, change groups, snapshots."""

from __future__ import annotations

from typing import Any

import pytest

from qsys_core_sim.design import load_design
from qsys_core_sim.engine import Engine, Session
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
        (-6, -6.0, "-6.0dB", 0.0),
        (500, 0.0, "0.0dB", 1.0),
        (-1000, -100.0, "-100.0dB", 0.0),
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
    err = error(engine, session, "Snapshot.Load", {"Name": "Venue Scenes", "Bank": 2})
    assert err.code == ErrorCode.INVALID_PARAMS
    assert "empty" in err.message


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
