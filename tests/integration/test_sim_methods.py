"""Every QRC method over a real TCP connection, results checked against methods.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from qsys_core_sim.server import CoreSimulator
from qsys_protocol.qrc.client import QrcClient
from qsys_protocol.qrc.errors import ErrorCode, QrcError
from qsys_protocol.qrc.methods import METHODS

pytestmark = pytest.mark.timeout(30)

ZONE = "Room101 Zone1 Gain"


async def ok(client: QrcClient, method: str, params: Any = None) -> Any:
    result = await client.call(method, params, timeout=5)
    METHODS[method].result.validate_python(result)
    return result


async def fails(client: QrcClient, method: str, params: Any = None) -> QrcError:
    with pytest.raises(QrcError) as info:
        await client.call(method, params, timeout=5)
    return info.value


async def test_engine_status_is_pushed_on_connect(qrc_client: QrcClient) -> None:
    msg = await qrc_client.next_notification("EngineStatus", timeout=5)
    # the vendor's help: EngineStatus carries these, StatusGet adds Platform and Status
    assert set(msg.params) == {"State", "DesignName", "DesignCode", "IsRedundant", "IsEmulator"}
    assert msg.params["State"] == "Active"
    assert msg.params["DesignName"] == "Demo Venue"


async def test_status_get_and_noop(qrc_client: QrcClient) -> None:
    status = await ok(qrc_client, "StatusGet")
    assert status["DesignCode"] == "SIMdemo0001"
    assert status["IsEmulator"] is True
    assert status["Status"] == {"Code": 0, "String": "OK"}
    assert await ok(qrc_client, "StatusGet", 0) == status
    assert await ok(qrc_client, "NoOp", {}) is True
    assert await ok(qrc_client, "NoOp") is True


async def test_control_get_and_set(qrc_client: QrcClient) -> None:
    assert await ok(qrc_client, "Control.Set", {"Name": "LobbyMusicLevel", "Value": -12}) == {
        "Name": "LobbyMusicLevel",
        "Value": -12.0,
        "String": "-12.0dB",
        "Position": 0.88,
    }
    states = await ok(qrc_client, "Control.Get", ["LobbyMusicLevel", "WelcomeText", "MainMute"])
    assert states[0] == {
        "Name": "LobbyMusicLevel",
        "Value": -12.0,
        "String": "-12.0dB",
        "Position": 0.88,
    }
    assert states[1]["String"] == "Welcome"
    assert states[2]["Name"] == "MainMute"


async def test_named_control_aliases_a_component_control(qrc_client: QrcClient) -> None:
    await ok(qrc_client, "Control.Set", {"Name": "MainGain", "Value": -7})
    got = await ok(
        qrc_client,
        "Component.Get",
        {"Name": "Auditorium Zone1 Gain", "Controls": [{"Name": "gain"}]},
    )
    assert got["Controls"][0]["Value"] == -7.0


async def test_value_is_clamped_to_the_range(qrc_client: QrcClient) -> None:
    await ok(qrc_client, "Control.Set", {"Name": "LobbyMusicLevel", "Value": 50})
    (state,) = await ok(qrc_client, "Control.Get", ["LobbyMusicLevel"])
    assert (state["Value"], state["Position"]) == (0.0, 1.0)
    await ok(qrc_client, "Control.Set", {"Name": "LobbyMusicLevel", "Value": -1e9})
    (state,) = await ok(qrc_client, "Control.Get", ["LobbyMusicLevel"])
    assert (state["Value"], state["String"], state["Position"]) == (-100.0, "-100dB", 0.0)


async def test_components(qrc_client: QrcClient) -> None:
    comps = await ok(qrc_client, "Component.GetComponents")
    names = [c["Name"] for c in comps]
    assert ZONE in names
    assert len(names) == 15
    mixer = next(c for c in comps if c["Name"] == "Room101 Mixer")
    assert {"Name": "n_inputs", "Value": "4", "PrettyName": "n_inputs"} in mixer["Properties"]
    controls = await ok(qrc_client, "Component.GetControls", {"Name": ZONE})
    gain = next(c for c in controls["Controls"] if c["Name"] == "gain")
    assert gain["Type"] == "Float"
    assert (gain["ValueMin"], gain["ValueMax"]) == (-100.0, 20.0)
    assert (gain["StringMin"], gain["StringMax"]) == ("-100dB", "20.0dB")
    assert gain["Direction"] == "Read/Write"


async def test_component_set_and_get(qrc_client: QrcClient) -> None:
    params = {
        "Name": ZONE,
        "Controls": [{"Name": "gain", "Value": -3.5}, {"Name": "mute", "Value": True}],
    }
    assert await ok(qrc_client, "Component.Set", params) is True
    got = await ok(
        qrc_client,
        "Component.Get",
        {"Name": ZONE, "Controls": [{"Name": "gain"}, {"Name": "mute"}]},
    )
    assert got == {
        "Name": ZONE,
        "Controls": [
            {
                "Name": "gain",
                "Value": -3.5,
                "String": "-3.50dB",
                "Position": pytest.approx(0.8041666),
            },
            {"Name": "mute", "Value": 1, "String": "muted", "Position": 1.0},
        ],
    }
    echoed = await ok(
        qrc_client,
        "Component.Set",
        {"Name": ZONE, "Controls": [{"Name": "gain", "Position": 1.0}], "ResponseValues": True},
    )
    assert echoed == [
        {"Component": ZONE, "Name": "gain", "String": "20.0dB", "Value": 20.0, "Position": 1.0}
    ]


async def test_snapshot_really_stores_and_recalls(qrc_client: QrcClient) -> None:
    async def gains() -> list[float]:
        got = await ok(qrc_client, "Component.Get", {"Name": ZONE, "Controls": [{"Name": "gain"}]})
        return [c["Value"] for c in got["Controls"]]

    await ok(
        qrc_client, "Component.Set", {"Name": ZONE, "Controls": [{"Name": "gain", "Value": -33}]}
    )
    assert await ok(qrc_client, "Snapshot.Save", {"Name": "Room Presets", "Bank": 2}) is True
    await ok(
        qrc_client, "Component.Set", {"Name": ZONE, "Controls": [{"Name": "gain", "Value": 3}]}
    )
    assert await gains() == [3.0]
    assert (
        await ok(qrc_client, "Snapshot.Load", {"Name": "Room Presets", "Bank": 2, "Ramp": 0})
        is True
    )
    assert await gains() == [-33.0]
    err = await fails(qrc_client, "Snapshot.Load", {"Name": "Room Presets", "Bank": 9})
    assert err.code == ErrorCode.INVALID_PARAMS
    # a snapshot never saved loads nothing: no error code of the vendor's QRC help is
    # for it, and the Snapshot Controller loads "the control settings saved" in it
    await ok(
        qrc_client, "Component.Set", {"Name": ZONE, "Controls": [{"Name": "gain", "Value": 7}]}
    )
    assert await ok(qrc_client, "Snapshot.Load", {"Name": "Room Presets", "Bank": 5}) is True
    assert await gains() == [7.0]


async def test_change_group_poll_invalidate_clear_destroy(qrc_client: QrcClient) -> None:
    c = qrc_client
    assert await ok(c, "ChangeGroup.AddControl", {"Id": "g", "Controls": ["MainGain", "MainMute"]})
    assert await ok(
        c,
        "ChangeGroup.AddComponentControl",
        {"Id": "g", "Component": {"Name": ZONE, "Controls": [{"Name": "gain"}]}},
    )
    first = await ok(c, "ChangeGroup.Poll", {"Id": "g"})
    assert first["Id"] == "g"
    assert {(ch.get("Component"), ch["Name"]) for ch in first["Changes"]} == {
        (None, "MainGain"),
        (None, "MainMute"),
        (ZONE, "gain"),
    }
    assert (await ok(c, "ChangeGroup.Poll", {"Id": "g"}))["Changes"] == []
    await ok(c, "Control.Set", {"Name": "MainGain", "Value": -1})
    await ok(c, "Control.Set", {"Name": "MainGain", "Value": -1})  # unchanged: reported once
    changes = (await ok(c, "ChangeGroup.Poll", {"Id": "g"}))["Changes"]
    assert changes == [{"Name": "MainGain", "Value": -1.0, "String": "-1.00dB", "Position": 0.825}]
    assert await ok(c, "ChangeGroup.Invalidate", {"Id": "g"}) is True
    assert len((await ok(c, "ChangeGroup.Poll", {"Id": "g"}))["Changes"]) == 3
    assert await ok(c, "ChangeGroup.Remove", {"Id": "g", "Controls": ["MainMute"]}) is True
    await ok(c, "ChangeGroup.Invalidate", {"Id": "g"})
    assert len((await ok(c, "ChangeGroup.Poll", {"Id": "g"}))["Changes"]) == 2
    assert await ok(c, "ChangeGroup.Clear", {"Id": "g"}) is True
    await ok(c, "Control.Set", {"Name": "MainGain", "Value": -2})
    assert (await ok(c, "ChangeGroup.Poll", {"Id": "g"}))["Changes"] == []
    assert await ok(c, "ChangeGroup.Destroy", {"Id": "g"}) is True
    assert (await fails(c, "ChangeGroup.Poll", {"Id": "g"})).code == ErrorCode.UNKNOWN_CHANGE_GROUP


async def test_change_groups_belong_to_their_connection(
    sim: CoreSimulator, make_client: Any
) -> None:
    a: QrcClient = await make_client(sim.port)
    b: QrcClient = await make_client(sim.port)
    await ok(a, "ChangeGroup.AddControl", {"Id": 1, "Controls": ["MainGain"]})
    assert (await fails(b, "ChangeGroup.Poll", {"Id": 1})).code == ErrorCode.UNKNOWN_CHANGE_GROUP
    assert sim.engine.change_group_count == 1
    await a.close()
    async with asyncio.timeout(5):
        while sim.engine.change_group_count:
            await asyncio.sleep(0.01)


async def test_autopoll_pushes_changes(sim: CoreSimulator, qrc_client: QrcClient) -> None:
    c = qrc_client
    await ok(c, "ChangeGroup.AddControl", {"Id": "auto", "Controls": ["LobbyMusicLevel"]})
    assert await ok(c, "ChangeGroup.AutoPoll", {"Id": "auto", "Rate": 0.05}) is True
    first = await c.next_notification("ChangeGroup.Poll", timeout=5)
    METHODS["ChangeGroup.Poll"].result.validate_python(first.params)
    assert first.params["Id"] == "auto"
    assert [ch["Name"] for ch in first.params["Changes"]] == ["LobbyMusicLevel"]
    # Nothing changed: nothing is pushed.
    with pytest.raises(TimeoutError):
        await c.next_notification("ChangeGroup.Poll", timeout=0.3)
    sim.set_control("LobbyMusicLevel", -42)  # a person at the Core moves the fader
    pushed = await c.next_notification("ChangeGroup.Poll", timeout=5)
    assert pushed.params["Changes"] == [
        {"Name": "LobbyMusicLevel", "Value": -42.0, "String": "-42.0dB", "Position": 0.58}
    ]
    await ok(c, "ChangeGroup.Destroy", {"Id": "auto"})
    sim.set_control("LobbyMusicLevel", -41)
    with pytest.raises(TimeoutError):
        await c.next_notification("ChangeGroup.Poll", timeout=0.3)


async def test_autopoll_rate_can_be_changed(sim: CoreSimulator, qrc_client: QrcClient) -> None:
    c = qrc_client
    await ok(c, "ChangeGroup.AddControl", {"Id": 5, "Controls": ["MainGain"]})
    await ok(c, "ChangeGroup.AutoPoll", {"Id": 5, "Rate": 3600})
    await ok(c, "ChangeGroup.AutoPoll", {"Id": 5, "Rate": 0.05})
    msg = await c.next_notification("ChangeGroup.Poll", timeout=5)
    assert msg.params["Id"] == 5
    conn = next(iter(sim.connections))
    assert len(conn.autopolls) == 1


@pytest.mark.parametrize(
    ("method", "params", "code"),
    [
        ("Nope.Method", {}, ErrorCode.METHOD_NOT_FOUND),
        ("Control.Get", ["NoSuchControl"], ErrorCode.UNKNOWN_CONTROL),
        ("Control.Get", [], ErrorCode.INVALID_PARAMS),
        ("Control.Get", {"Name": "MainGain"}, ErrorCode.INVALID_PARAMS),
        ("Control.Set", {"Name": "NoSuch", "Value": 1}, ErrorCode.UNKNOWN_CONTROL),
        ("Control.Set", {"Name": "FireAlarmActive", "Value": 1}, ErrorCode.INVALID_PARAMS),
        ("Control.Set", {"Name": "MainGain"}, ErrorCode.INVALID_PARAMS),
        ("Control.Set", {"Name": "MainGain", "Value": "loud"}, ErrorCode.INVALID_PARAMS),
        ("StatusGet", {"Verbose": True}, ErrorCode.INVALID_PARAMS),
        ("NoOp", [1], ErrorCode.INVALID_PARAMS),
        ("Component.GetControls", {"Name": "Nope"}, ErrorCode.UNKNOWN_COMPONENT),
        ("Component.GetControls", {}, ErrorCode.INVALID_PARAMS),
        (
            "Component.Get",
            {"Name": "Nope", "Controls": [{"Name": "gain"}]},
            ErrorCode.UNKNOWN_COMPONENT,
        ),
        (
            "Component.Get",
            {"Name": ZONE, "Controls": [{"Name": "nope"}]},
            ErrorCode.UNKNOWN_CONTROL,
        ),
        (
            "Component.Set",
            {"Name": ZONE, "Controls": [{"Name": "x", "Value": 1}]},
            ErrorCode.UNKNOWN_CONTROL,
        ),
        (
            "Component.Set",
            {"Name": "Nope", "Controls": [{"Name": "gain", "Value": 1}]},
            ErrorCode.UNKNOWN_COMPONENT,
        ),
        ("ChangeGroup.AddControl", {"Id": "g", "Controls": ["Nope"]}, ErrorCode.UNKNOWN_CONTROL),
        (
            "ChangeGroup.AddComponentControl",
            {"Id": "g", "Component": {"Name": "Nope", "Controls": [{"Name": "gain"}]}},
            ErrorCode.UNKNOWN_COMPONENT,
        ),
        (
            "ChangeGroup.Remove",
            {"Id": "none", "Controls": ["MainGain"]},
            ErrorCode.UNKNOWN_CHANGE_GROUP,
        ),
        ("ChangeGroup.Poll", {"Id": "none"}, ErrorCode.UNKNOWN_CHANGE_GROUP),
        ("ChangeGroup.AutoPoll", {"Id": "none", "Rate": 1}, ErrorCode.UNKNOWN_CHANGE_GROUP),
        ("ChangeGroup.AutoPoll", {"Id": "none", "Rate": -1}, ErrorCode.INVALID_PARAMS),
        ("ChangeGroup.Invalidate", {"Id": "none"}, ErrorCode.UNKNOWN_CHANGE_GROUP),
        ("ChangeGroup.Clear", {"Id": "none"}, ErrorCode.UNKNOWN_CHANGE_GROUP),
        ("ChangeGroup.Destroy", {"Id": "none"}, ErrorCode.UNKNOWN_CHANGE_GROUP),
        ("ChangeGroup.Poll", {"Id": [1]}, ErrorCode.INVALID_PARAMS),
        ("Snapshot.Save", {"Name": "Nope", "Bank": 1}, ErrorCode.UNKNOWN_COMPONENT),
        ("Snapshot.Save", {"Name": "Venue Scenes", "Bank": 9}, ErrorCode.INVALID_PARAMS),
        ("Snapshot.Load", {"Name": "Venue Scenes", "Bank": 9}, ErrorCode.INVALID_PARAMS),
        ("Snapshot.Load", {"Name": "Venue Scenes"}, ErrorCode.INVALID_PARAMS),
        ("Logon", {"User": "x"}, ErrorCode.INVALID_PARAMS),
    ],
)
async def test_error_paths(qrc_client: QrcClient, method: str, params: Any, code: int) -> None:
    resp = await qrc_client.request(method, params, timeout=5)
    assert resp.error is not None
    assert resp.error["code"] == code
    assert isinstance(resp.error["message"], str)
    # The connection keeps working after every error.
    assert await ok(qrc_client, "NoOp", {}) is True


async def test_change_group_limit_across_connections(qsys_simulator: Any, make_client: Any) -> None:
    sim: CoreSimulator = await qsys_simulator(max_change_groups=512)
    a: QrcClient = await make_client(sim.port)
    b: QrcClient = await make_client(sim.port)

    async def add(client: QrcClient, ids: range) -> list[Any]:
        return await asyncio.gather(
            *(
                client.request("ChangeGroup.AddControl", {"Id": i, "Controls": ["MainGain"]})
                for i in ids
            )
        )

    assert all(r.result is True for r in await add(a, range(300)))
    assert all(r.result is True for r in await add(b, range(212)))
    assert sim.engine.change_group_count == 512
    for client in (a, b):
        err = await fails(
            client, "ChangeGroup.AddControl", {"Id": "one-more", "Controls": ["MainGain"]}
        )
        assert err.code == ErrorCode.CHANGE_GROUPS_EXHAUSTED
    # Existing groups still work at the limit; destroying one frees a slot.
    await ok(b, "ChangeGroup.AddControl", {"Id": 0, "Controls": ["MainMute"]})
    await ok(a, "ChangeGroup.Destroy", {"Id": 7})
    await ok(b, "ChangeGroup.AddControl", {"Id": "one-more", "Controls": ["MainGain"]})
    # Closing a connection frees all its groups.
    await a.close()
    async with asyncio.timeout(5):
        while sim.engine.change_group_count != 213:
            await asyncio.sleep(0.01)
    await ok(b, "ChangeGroup.AddControl", {"Id": "after-close", "Controls": ["MainGain"]})


async def test_notifications_get_no_reply_but_take_effect(qrc_client: QrcClient) -> None:
    await qrc_client.notify("Control.Set", {"Name": "LobbyMusicLevel", "Value": -55})
    await qrc_client.notify("Nope.Method", {})
    (state,) = await ok(qrc_client, "Control.Get", ["LobbyMusicLevel"])
    assert state["Value"] == -55.0


async def test_standby_unit_answers_32604(sim: CoreSimulator, qrc_client: QrcClient) -> None:
    await qrc_client.next_notification("EngineStatus", timeout=5)
    sim.set_state("Standby")
    pushed = await qrc_client.next_notification("EngineStatus", timeout=5)
    assert pushed.params["State"] == "Standby"
    assert (await fails(qrc_client, "Control.Get", ["MainGain"])).code == ErrorCode.STANDBY
    assert (await ok(qrc_client, "StatusGet"))["State"] == "Standby"
    sim.set_state("Active")
    assert await ok(qrc_client, "Control.Get", ["MainGain"])


async def test_autopoll_ends_with_its_group(sim: CoreSimulator, qrc_client: QrcClient) -> None:
    c = qrc_client
    await ok(c, "ChangeGroup.AddControl", {"Id": "r", "Controls": ["MainGain"]})
    await ok(c, "ChangeGroup.AutoPoll", {"Id": "r", "Rate": 0.05})
    await c.next_notification("ChangeGroup.Poll", timeout=5)
    await ok(c, "ChangeGroup.Destroy", {"Id": "r"})
    # A new group with the same id is not on AutoPoll: it is only polled on request.
    await ok(c, "ChangeGroup.AddControl", {"Id": "r", "Controls": ["MainGain"]})
    sim.set_control("MainGain", -13)
    with pytest.raises(TimeoutError):
        await c.next_notification("ChangeGroup.Poll", timeout=0.4)
    changes = (await ok(c, "ChangeGroup.Poll", {"Id": "r"}))["Changes"]
    assert [(ch["Name"], ch["Value"]) for ch in changes] == [("MainGain", -13.0)]


async def test_ramp_is_honoured_over_time(qrc_client: QrcClient) -> None:
    await ok(qrc_client, "Control.Set", {"Name": "LobbyMusicLevel", "Value": -100})
    await ok(qrc_client, "ChangeGroup.AddControl", {"Id": "ramp", "Controls": ["LobbyMusicLevel"]})
    await ok(qrc_client, "ChangeGroup.Poll", {"Id": "ramp"})
    loop = asyncio.get_running_loop()
    began = loop.time()
    await ok(qrc_client, "Control.Set", {"Name": "LobbyMusicLevel", "Value": 0, "Ramp": 1.0})
    await asyncio.sleep(0.4)
    (state,) = await ok(qrc_client, "Control.Get", ["LobbyMusicLevel"])
    elapsed = loop.time() - began
    assert -100.0 < state["Value"] < 0.0
    assert state["Value"] == pytest.approx(-100 + 100 * elapsed, abs=15)
    (seen,) = (await ok(qrc_client, "ChangeGroup.Poll", {"Id": "ramp"}))["Changes"]
    assert -100.0 < seen["Value"] < 0.0
    await asyncio.sleep(1.0)
    (final,) = (await ok(qrc_client, "ChangeGroup.Poll", {"Id": "ramp"}))["Changes"]
    assert (final["Value"], final["String"]) == (0.0, "0dB")


async def test_a_whole_control_state_is_a_write_as_on_a_core(qrc_client: QrcClient) -> None:
    """`control.update(other.state)` (the vendor SDK's README): unknown members dropped."""
    got = await ok(qrc_client, "Component.GetControls", {"Name": ZONE})
    gain = next(c for c in got["Controls"] if c["Name"] == "gain")
    mute = next(c for c in got["Controls"] if c["Name"] == "mute")
    assert mute["String"] == "unmuted"
    state = {**gain, "Value": -7, "Bool": False, "Position": None, "String": None}
    state = {k: v for k, v in state.items() if v is not None}
    written = await ok(
        qrc_client,
        "Component.Set",
        {"Name": ZONE, "Controls": [state], "ResponseValues": True, "Origin": "panel"},
    )
    assert [(c["Name"], c["Value"], c["String"]) for c in written] == [("gain", -7.0, "-7.00dB")]
    assert (
        await ok(qrc_client, "Control.Set", {"Name": "MainGain", "Value": -9, "Type": "Float"})
    )["Value"] == -9.0


async def test_unknown_change_group_error_reads_as_the_emulators(qrc_client: QrcClient) -> None:
    err = await fails(qrc_client, "ChangeGroup.Poll", {"Id": "my group"})
    assert (err.code, err.message) == (6, "Change group 'my group' does not exist")
