"""Method registry and parameter validation."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from qsys_protocol.qrc import methods as m
from qsys_protocol.qrc.errors import ErrorCode, QrcError
from qsys_protocol.qrc.methods import parse_params

QRC_METHODS = {
    "Logon",
    "NoOp",
    "StatusGet",
    "Control.Get",
    "Control.Set",
    "Component.GetComponents",
    "Component.GetControls",
    "Component.Get",
    "Component.Set",
    "ChangeGroup.AddControl",
    "ChangeGroup.AddComponentControl",
    "ChangeGroup.Remove",
    "ChangeGroup.Poll",
    "ChangeGroup.AutoPoll",
    "ChangeGroup.Invalidate",
    "ChangeGroup.Clear",
    "ChangeGroup.Destroy",
    "Snapshot.Load",
    "Snapshot.Save",
}


def params_error(method: str, raw: object) -> QrcError:
    with pytest.raises(QrcError) as info:
        m.parse_params(method, raw)
    return info.value


def test_registry_covers_the_qrc_method_table() -> None:
    assert set(m.METHODS) == QRC_METHODS
    assert {s.kind for s in m.METHODS.values()} == {"session", "read", "write", "change_group"}
    assert m.METHODS["Control.Set"].kind == "write"
    assert m.METHODS["Component.Get"].kind == "read"


def test_unknown_method() -> None:
    err = params_error("Mixer.SetCrossPointGain", {})
    assert err.code == ErrorCode.METHOD_NOT_FOUND


@pytest.mark.parametrize("raw", [None, 0, {}, []])
def test_status_get_takes_nothing(raw: object) -> None:
    assert m.parse_params("StatusGet", raw) is None


def test_status_get_rejects_params() -> None:
    assert params_error("StatusGet", {"x": 1}).code == ErrorCode.INVALID_PARAMS


def test_empty_params_accept_none() -> None:
    assert isinstance(m.parse_params("NoOp", None), m.EmptyParams)
    assert m.parse_params("NoOp", {"x": 1}) == m.EmptyParams()
    assert params_error("NoOp", [1]).code == ErrorCode.INVALID_PARAMS


def test_valid_params_become_models() -> None:
    p = m.parse_params("Component.Set", {"Name": "G", "Controls": [{"Name": "gain", "Value": -3}]})
    assert isinstance(p, m.ComponentSetParams)
    assert p.Controls[0].Value == -3
    get = m.parse_params("Control.Get", ["A", "B"])
    assert isinstance(get, m.ControlGetParams)
    assert get.root == ["A", "B"]
    auto = m.parse_params("ChangeGroup.AutoPoll", {"Id": 7, "Rate": 0.5})
    assert isinstance(auto, m.ChangeGroupAutoPollParams)
    assert auto.Id == 7


@pytest.mark.parametrize(
    ("method", "raw", "fragment"),
    [
        ("Control.Get", [], "params"),
        ("Control.Get", [""], "0"),
        ("Control.Get", "MainGain", "params"),
        ("Control.Set", {"Name": "A"}, "one of Value, Position or String"),
        ("Control.Set", {"Name": "A", "Value": [1]}, "Value"),
        ("Control.Set", {"Name": "A", "Position": 1.5}, "Position"),
        ("Control.Set", {"Name": "A", "Value": 1, "Ramp": -1}, "Ramp"),
        ("Component.Get", {"Name": "A", "Controls": []}, "Controls"),
        ("ChangeGroup.AddControl", {"Id": True, "Controls": ["A"]}, "Id"),
        ("ChangeGroup.AutoPoll", {"Id": "1", "Rate": 0}, "Rate"),
        ("Snapshot.Load", {"Name": "S", "Bank": 0}, "Bank"),
        ("Logon", {"User": "u"}, "Password"),
    ],
)
def test_invalid_params_name_the_field(method: str, raw: object, fragment: str) -> None:
    err = params_error(method, raw)
    assert err.code == ErrorCode.INVALID_PARAMS
    assert err.message.startswith("Invalid params: ")
    assert fragment in err.message


def test_unknown_members_are_dropped_as_a_core_ignores_them() -> None:
    """The QRWC SDK's `control.update(other.state)` sends a whole control state."""
    state = {
        "Name": "gain",
        "Type": "Float",
        "Value": -3,
        "ValueMin": -100,
        "ValueMax": 20,
        "StringMin": "-100dB",
        "StringMax": "20.0dB",
        "Direction": "Read/Write",
        "Bool": False,
        "Choices": ["a"],
    }
    p = m.parse_params("Component.Set", {"Name": "G", "Controls": [state], "Extra": {"x": 1}})
    assert isinstance(p, m.ComponentSetParams)
    assert p.model_dump(mode="json", exclude_none=True) == {
        "Name": "G",
        "Controls": [{"Name": "gain", "Value": -3}],
    }
    # known fields keep their types and sizes
    with pytest.raises(QrcError):
        m.parse_params("Control.Set", {"Name": "A", "Value": [1], "Type": "Float"})
    with pytest.raises(QrcError):
        m.parse_params("Control.Set", {"Name": "A" * 300, "Value": 1, "Type": "Float"})


def test_invalid_params_never_echo_the_value() -> None:
    secret = "hunter2-very-secret"
    err = params_error("Logon", {"User": "admin", "Password": {"nested": secret}})
    assert secret not in err.message
    err = params_error("Control.Set", {"Name": "A", "Value": [secret]})
    assert secret not in err.message


def test_logon_password_is_secret() -> None:
    p = m.parse_params("Logon", {"User": "u", "Password": "pw"})
    assert isinstance(p, m.LogonParams)
    assert "pw" not in repr(p)
    assert p.Password.get_secret_value() == "pw"


def test_result_models_accept_core_shapes_and_reject_wrong_ones() -> None:
    state = {"Name": "A", "Value": -6.0, "String": "-6.0dB", "Position": 0.5}
    assert m.METHODS["Control.Get"].result.validate_python([state])
    assert m.METHODS["Control.Set"].result.validate_python(True) is True
    assert m.METHODS["Logon"].result.validate_python(True) is True
    with pytest.raises(ValidationError):
        m.METHODS["Logon"].result.validate_python(False)
    with pytest.raises(ValidationError):
        m.METHODS["Control.Get"].result.validate_python([{"Name": "A"}])
    poll = m.METHODS["ChangeGroup.Poll"].result.validate_python(
        {"Id": "g", "Changes": [{**state, "Component": "C"}], "Unknown": 1}
    )
    assert isinstance(poll, m.ChangeGroupPollResult)
    assert poll.Changes[0].Component == "C"


# ---- invisible characters in names ------------------------------------------


def _invisible_code_points() -> list[str]:
    import unicodedata

    return [
        chr(cp)
        for cp in range(0x110000)
        if not 0xD800 <= cp <= 0xDFFF and unicodedata.category(chr(cp)) in ("Cc", "Cf", "Zl", "Zp")
    ]


def test_every_control_format_and_separator_character_is_refused_in_names() -> None:
    from qsys_protocol.qrc.methods import _visible

    chars = _invisible_code_points()
    assert len(chars) > 150
    for ch in chars:
        with pytest.raises(ValueError, match="control characters"):
            _visible(f"Zone{ch}1")
    names = ("Room101 Zone1 Gain", "input.1.gain", "Salle \u00c9t\u00e9 \u2013 Gain", "会議室 1")
    for ok in (*names, "a_b-c/d"):
        assert _visible(ok) == ok


@pytest.mark.parametrize(
    "bad", ["Zone1\x00", "Zone1\nGain", "Zo\u200bne1", "\u202eniaG", "Z\ufeff"]
)
@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("Component.Set", lambda n: {"Name": n, "Controls": [{"Name": "gain", "Value": 0}]}),
        ("Component.Set", lambda n: {"Name": "Zone1", "Controls": [{"Name": n, "Value": 0}]}),
        ("Component.Get", lambda n: {"Name": n, "Controls": [{"Name": "gain"}]}),
        ("Control.Set", lambda n: {"Name": n, "Value": 0}),
        ("Control.Get", lambda n: [n]),
        ("ChangeGroup.AddControl", lambda n: {"Id": n, "Controls": ["x"]}),
        ("Snapshot.Load", lambda n: {"Name": n, "Bank": 1}),
    ],
)
def test_names_with_invisible_characters_are_invalid_params(
    bad: str, method: str, params: Any
) -> None:
    with pytest.raises(QrcError) as info:
        parse_params(method, params(bad))
    assert info.value.code == -32602
    assert bad not in str(info.value)
