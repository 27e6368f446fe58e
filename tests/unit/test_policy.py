"""Authorisation of calls against AccessPolicy rules (docs/policy.md)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsys_gateway import policy as policy_module
from qsys_gateway.policy import Decision, OutOfRange, Policy, needs_control_types
from qsys_protocol.config import Rule, SubjectConfig, ValueRange
from qsys_protocol.qrc.methods import METHODS, parse_params


def policy(*rules: dict[str, Any], name: str = "panel") -> Policy:
    subject = SubjectConfig(
        name=name, tokenSha256="0" * 64, rules=[Rule.model_validate(r) for r in rules]
    )
    return Policy([subject])


def call(p: Policy, method: str, raw: Any = None, subject: str = "panel") -> Decision:
    params = parse_params(method, raw) if method in METHODS else raw
    return p.authorize(subject, method, params)


def cset(component: str, *controls: dict[str, Any]) -> dict[str, Any]:
    return {"Name": component, "Controls": list(controls)}


ZONE_RULE: dict[str, Any] = {
    "methods": ["Component.Set"],
    "components": ["Zone*"],
    "controls": ["gain", "mute"],
    "valueRange": {"min": -60, "max": 0},
}


# ---- deny by default --------------------------------------------------------


def test_no_rules_denies_everything() -> None:
    p = policy()
    for method, raw in [
        ("NoOp", {}),
        ("StatusGet", None),
        ("Control.Get", ["Gain"]),
        ("Component.Set", cset("Zone1", {"Name": "gain", "Value": -10})),
    ]:
        d = call(p, method, raw)
        assert not d.allowed
        assert "no rule allows method" in d.reason


def test_unknown_subject_is_denied() -> None:
    p = policy({"methods": ["*"]})
    d = call(p, "NoOp", {}, subject="stranger")
    assert not d.allowed
    assert d.reason == "unknown subject"


def test_subjects_do_not_share_rules() -> None:
    p = Policy(
        [
            SubjectConfig(name="a", tokenSha256="0" * 64, rules=[Rule(methods=["*"])]),
            SubjectConfig(name="b", tokenSha256="1" * 64),
        ]
    )
    assert call(p, "StatusGet", subject="a").allowed
    assert not call(p, "StatusGet", subject="b").allowed


# ---- method globs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("glob", "method", "allowed"),
    [
        ("StatusGet", "StatusGet", True),
        ("ChangeGroup.*", "ChangeGroup.Poll", True),
        ("ChangeGroup.*", "ChangeGroup.Destroy", True),
        ("ChangeGroup.*", "Component.Get", False),
        ("Component.Get*", "Component.GetComponents", True),
        ("Component.Get*", "Component.Set", False),
        ("*", "NoOp", True),
        ("statusget", "StatusGet", False),  # case sensitive
        ("Status?et", "StatusGet", True),
        ("[NS]*", "NoOp", True),
    ],
)
def test_method_globs(glob: str, method: str, allowed: bool) -> None:
    raws: dict[str, Any] = {
        "StatusGet": None,
        "NoOp": {},
        "ChangeGroup.Poll": {"Id": "g"},
        "ChangeGroup.Destroy": {"Id": 1},
        "Component.Get": {"Name": "Zone1", "Controls": [{"Name": "gain"}]},
        "Component.GetComponents": {},
        "Component.Set": cset("Zone1", {"Name": "gain", "Value": 1}),
    }
    assert call(policy({"methods": [glob]}), method, raws[method]).allowed is allowed


@pytest.mark.parametrize(
    "method",
    [
        "StatusGet",
        "NoOp",
        "Component.GetComponents",
        "ChangeGroup.Poll",
        "ChangeGroup.AutoPoll",
        "ChangeGroup.Invalidate",
        "ChangeGroup.Clear",
        "ChangeGroup.Destroy",
    ],
)
def test_method_only_calls_ignore_components_and_controls(method: str) -> None:
    raws: dict[str, Any] = {
        "StatusGet": None,
        "NoOp": {},
        "Component.GetComponents": None,
        "ChangeGroup.AutoPoll": {"Id": "g", "Rate": 1},
    }
    raw = raws.get(method, {"Id": "g"})
    p = policy({"methods": [method], "components": ["Nothing"], "controls": ["nothing"]})
    d = call(p, method, raw)
    assert d.allowed
    assert d.targets == ()
    assert d.values == ()


# ---- other (unmodelled) methods ----------------------------------------------


def test_other_methods_need_the_exact_name() -> None:
    raw = {"Name": "Mixer1", "Inputs": "1", "Outputs": "1", "Value": -6}
    assert not call(policy({"methods": ["*"]}), "Mixer.SetCrossPointGain", raw).allowed
    assert not call(policy({"methods": ["Mixer.*"]}), "Mixer.SetCrossPointGain", raw).allowed
    d = call(
        policy({"methods": ["Mixer.SetCrossPointGain"], "components": ["None"]}),
        "Mixer.SetCrossPointGain",
        raw,
    )
    assert d.allowed
    assert d.write
    assert not call(
        policy({"methods": ["Mixer.SetCrossPointGain"]}), "Mixer.SetCrossPointMute", raw
    ).allowed
    assert not call(policy({"methods": ["PA.*"]}), "PA.ZoneStatusConfigure", None).allowed


def test_other_method_with_a_glob_name_is_still_exact_only() -> None:
    p = policy({"methods": ["LoopPlayer.*"]})
    assert not call(p, "LoopPlayer.Start", {}).allowed
    assert "LoopPlayer.Start" in call(p, "LoopPlayer.Start", {}).reason


# ---- component / control globs ------------------------------------------------


def test_component_set_every_control_must_be_allowed() -> None:
    p = policy(ZONE_RULE)
    ok = call(p, "Component.Set", cset("Zone1", {"Name": "gain", "Value": -6}))
    assert ok.allowed
    assert ok.write
    assert ok.targets == ("Zone1.gain",)
    assert ok.values == (-6,)
    d = p.authorize(
        "panel",
        "Component.Set",
        cset(
            "Zone1",
            {"Name": "gain", "Value": -6},
            {"Name": "mute", "Value": True},
            {"Name": "eq.bypass", "Value": 1},
            {"Name": "delay", "Value": 1},
        ),
        {"mute": "Boolean"},
    )
    assert not d.allowed
    assert d.reason == "no rule allows Zone1.eq.bypass"
    assert d.targets == ("Zone1.gain", "Zone1.mute", "Zone1.eq.bypass", "Zone1.delay")
    assert d.values == (-6, True, 1, 1)


def test_component_glob() -> None:
    p = policy(ZONE_RULE)
    assert call(p, "Component.Set", cset("Zone12", {"Name": "gain", "Value": 0})).allowed
    d = call(p, "Component.Set", cset("Lobby", {"Name": "gain", "Value": 0}))
    assert not d.allowed
    assert d.reason == "no rule allows Lobby.gain"
    assert not call(p, "Component.Set", cset("zone1", {"Name": "gain", "Value": 0})).allowed


def test_controls_of_one_call_may_be_allowed_by_different_rules() -> None:
    p = policy(
        {"methods": ["Component.Set"], "components": ["Zone1"], "controls": ["gain"]},
        {"methods": ["Component.Set"], "components": ["Zone*"], "controls": ["mute"]},
    )
    raw = cset("Zone1", {"Name": "gain", "Value": -3}, {"Name": "mute", "Value": False})
    assert call(p, "Component.Set", raw).allowed
    raw2 = cset("Zone2", {"Name": "gain", "Value": -3}, {"Name": "mute", "Value": False})
    assert not call(p, "Component.Set", raw2).allowed


def test_rule_for_another_method_does_not_lend_its_components() -> None:
    p = policy(
        {"methods": ["Component.Get"], "components": ["*"], "controls": ["*"]},
        {"methods": ["Component.Set"], "components": ["Zone1"], "controls": ["gain"]},
    )
    assert call(p, "Component.Get", {"Name": "Lobby", "Controls": [{"Name": "x"}]}).allowed
    assert not call(p, "Component.Set", cset("Lobby", {"Name": "x", "Value": 1})).allowed


def test_component_get_checks_each_control() -> None:
    p = policy({"methods": ["Component.Get"], "components": ["Zone*"], "controls": ["g*"]})
    d = call(p, "Component.Get", {"Name": "Zone1", "Controls": [{"Name": "gain"}]})
    assert d.allowed
    assert not d.write
    assert d.values == ()
    assert d.targets == ("Zone1.gain",)
    d = call(
        p, "Component.Get", {"Name": "Zone1", "Controls": [{"Name": "gain"}, {"Name": "mute"}]}
    )
    assert not d.allowed
    assert d.reason == "no rule allows Zone1.mute"


def test_change_group_add_component_control() -> None:
    rule = {"methods": ["ChangeGroup.*"], "components": ["Zone*"], "controls": ["gain"]}
    raw = {"Id": "g", "Component": {"Name": "Zone1", "Controls": [{"Name": "gain"}]}}
    d = call(policy(rule), "ChangeGroup.AddComponentControl", raw)
    assert not d.allowed, "a change group delivers values: adding needs read permission"
    assert d.reason == "no rule allows reading Zone1.gain"
    p = policy({**rule, "methods": ["ChangeGroup.*", "Component.Get"]})
    d = call(p, "ChangeGroup.AddComponentControl", raw)
    assert d.allowed
    assert d.targets == ("Zone1.gain",)
    raw["Component"] = {"Name": "Zone1", "Controls": [{"Name": "gain"}, {"Name": "mute"}]}
    assert not call(p, "ChangeGroup.AddComponentControl", raw).allowed
    raw["Component"] = {"Name": "Lobby", "Controls": [{"Name": "gain"}]}
    assert not call(p, "ChangeGroup.AddComponentControl", raw).allowed


# ---- Named Controls ---------------------------------------------------------------


def test_named_controls_need_a_component_glob_matching_empty() -> None:
    zones_only = policy({"methods": ["Control.*"], "components": ["Zone*"]})
    assert not call(zones_only, "Control.Get", ["MainGain"]).allowed
    everything = policy({"methods": ["Control.*"], "components": ["*"], "controls": ["Main*"]})
    d = call(everything, "Control.Get", ["MainGain", "MainMute"])
    assert d.allowed
    assert d.targets == ("MainGain", "MainMute")
    d = call(everything, "Control.Get", ["MainGain", "Lights"])
    assert not d.allowed
    assert d.reason == "no rule allows Lights"


def test_control_set_named_control() -> None:
    p = policy({"methods": ["Control.Set"], "controls": ["MainGain"]})
    d = call(p, "Control.Set", {"Name": "MainGain", "Value": -12.5, "Ramp": 2})
    assert d.allowed
    assert d.write
    assert d.targets == ("MainGain",)
    assert d.values == (-12.5,)
    assert not call(p, "Control.Set", {"Name": "Other", "Value": 1}).allowed


def test_change_group_add_control_and_remove_are_named_controls() -> None:
    no_read = policy({"methods": ["ChangeGroup.*"], "controls": ["Main*"]})
    assert not call(no_read, "ChangeGroup.AddControl", {"Id": 1, "Controls": ["MainGain"]}).allowed
    assert call(no_read, "ChangeGroup.Remove", {"Id": 1, "Controls": ["MainGain"]}).allowed
    p = policy({"methods": ["ChangeGroup.*", "Control.Get"], "controls": ["Main*"]})
    for method in ("ChangeGroup.AddControl", "ChangeGroup.Remove"):
        assert call(p, method, {"Id": 1, "Controls": ["MainGain"]}).allowed
        d = call(p, method, {"Id": 1, "Controls": ["MainGain", "Secret"]})
        assert not d.allowed
        assert d.reason == "no rule allows Secret"
    zones = policy({"methods": ["ChangeGroup.*"], "components": ["Zone*"]})
    assert not call(zones, "ChangeGroup.AddControl", {"Id": 1, "Controls": ["MainGain"]}).allowed


# ---- GetControls / snapshots ----------------------------------------------------------


def test_get_controls_needs_every_control_of_the_component() -> None:
    partial = policy({"methods": ["Component.GetControls"], "controls": ["gain"]})
    d = call(partial, "Component.GetControls", {"Name": "Zone1"})
    assert not d.allowed
    assert d.targets == ("Zone1",)
    full = policy({"methods": ["Component.GetControls"], "components": ["Zone*"]})
    assert call(full, "Component.GetControls", {"Name": "Zone1"}).allowed
    assert not call(full, "Component.GetControls", {"Name": "Lobby"}).allowed
    doubled = policy(
        {"methods": ["Component.GetControls"], "controls": ["gain", "**"], "components": ["Z*"]}
    )
    assert call(doubled, "Component.GetControls", {"Name": "Zone1"}).allowed


def test_snapshots_match_the_snapshot_name_as_component() -> None:
    p = policy({"methods": ["Snapshot.*"], "components": ["Hall*"], "controls": ["nothing"]})
    d = call(p, "Snapshot.Load", {"Name": "Hall Presets", "Bank": 3, "Ramp": 1})
    assert d.allowed
    assert d.write
    assert d.targets == ("Hall Presets",)
    assert d.values == ({"Bank": 3},)
    assert call(p, "Snapshot.Save", {"Name": "Hall Presets", "Bank": 1}).allowed
    assert not call(p, "Snapshot.Load", {"Name": "Lobby Presets", "Bank": 1}).allowed


# ---- valueRange ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        (-60, True),
        (0, True),
        (-60.0, True),
        (-30.5, True),
        (-60.0001, False),
        (0.0001, False),
        (1, False),
        (-1000, False),
        (True, False),  # the Core applies 1.0: outside -60..0
        (False, True),  # 0.0
        ("-6", False),
    ],
)
def test_value_range_boundaries(value: Any, allowed: bool) -> None:
    d = call(policy(ZONE_RULE), "Component.Set", cset("Zone1", {"Name": "gain", "Value": value}))
    assert d.allowed is allowed
    assert d.values == (value,)


@pytest.mark.parametrize(
    ("control_type", "value", "low", "high", "allowed"),
    [
        ("Float", True, -60, 0, False),  # +1 dB through a -60..0 rule
        ("Float", False, -60, 0, True),
        ("Float", False, -60, -20, False),  # 0 dB through -60..-20
        ("Integer", True, 0, 4, True),
        ("Boolean", True, -60, 0, True),  # a mute toggle under a gain range
        ("Boolean", False, -60, -20, True),
        ("Boolean", 1, -60, -20, True),
        ("Boolean", 5, -60, -20, False),
        (None, True, -60, 0, False),  # unknown type: only what is provably in range
        (None, False, -60, 0, True),
        (None, True, 0, 1, True),
    ],
)
def test_booleans_are_judged_as_the_value_the_core_applies(
    control_type: str | None, value: Any, low: float, high: float, allowed: bool
) -> None:
    rule = {
        "methods": ["Component.Set"],
        "components": ["Zone*"],
        "controls": ["gain", "mute"],
        "valueRange": {"min": low, "max": high},
    }
    p = policy(rule)
    types = {"gain": control_type} if control_type is not None else None
    params = cset("Zone1", {"Name": "gain", "Value": value})
    assert needs_control_types("Component.Set", parse_params("Component.Set", params)) == (
        "Zone1" if isinstance(value, bool) else None
    )
    d = p.authorize("panel", "Component.Set", params, types)
    assert d.allowed is allowed


def test_position_and_string_do_not_match_a_ranged_rule() -> None:
    p = policy(ZONE_RULE)
    d = call(p, "Component.Set", cset("Zone1", {"Name": "gain", "Position": 0.5}))
    assert not d.allowed
    assert d.values == ({"Position": 0.5},)
    d = call(p, "Component.Set", cset("Zone1", {"Name": "gain", "String": "-6dB"}))
    assert not d.allowed
    assert d.values == ({"String": "-6dB"},)
    d = call(p, "Component.Set", cset("Zone1", {"Name": "gain", "Value": -6, "Position": 0.9}))
    assert not d.allowed


def test_unranged_rule_allows_position_and_string() -> None:
    p = policy({"methods": ["Component.Set"], "components": ["Zone*"]})
    assert call(p, "Component.Set", cset("Zone1", {"Name": "gain", "Position": 0.5})).allowed
    assert call(p, "Component.Set", cset("Zone1", {"Name": "label", "String": "x"})).allowed
    assert call(p, "Component.Set", cset("Zone1", {"Name": "gain", "Value": 99})).allowed


def test_another_rule_can_allow_what_a_ranged_rule_does_not() -> None:
    p = policy(
        ZONE_RULE,
        {"methods": ["Component.Set"], "components": ["Zone1"], "controls": ["gain"]},
    )
    assert call(p, "Component.Set", cset("Zone1", {"Name": "gain", "Value": 10})).allowed
    assert not call(p, "Component.Set", cset("Zone2", {"Name": "gain", "Value": 10})).allowed


def test_half_open_ranges() -> None:
    low = policy({"methods": ["Control.Set"], "valueRange": {"min": -10}})
    assert call(low, "Control.Set", {"Name": "G", "Value": 1e9}).allowed
    assert not call(low, "Control.Set", {"Name": "G", "Value": -11}).allowed
    high = policy({"methods": ["Control.Set"], "valueRange": {"max": 1}})
    assert call(high, "Control.Set", {"Name": "G", "Value": -1e9}).allowed
    assert not call(high, "Control.Set", {"Name": "G", "Value": 2}).allowed


def test_value_range_does_not_restrict_reads() -> None:
    p = policy({"methods": ["Component.*"], "components": ["Zone*"], "valueRange": {"max": 0}})
    assert call(p, "Component.Get", {"Name": "Zone1", "Controls": [{"Name": "gain"}]}).allowed


# ---- params handling ------------------------------------------------------------------


def test_raw_params_are_validated_for_modelled_methods() -> None:
    p = policy(ZONE_RULE)
    raw = cset("Zone1", {"Name": "gain", "Value": -3})
    assert p.authorize("panel", "Component.Set", raw).allowed
    d = p.authorize("panel", "Component.Set", {"Name": "Zone1"})
    assert not d.allowed
    assert d.reason == "invalid params"


def test_decision_is_frozen() -> None:
    d = call(policy(), "NoOp", {})
    with pytest.raises(AttributeError):
        d.allowed = True  # type: ignore[misc]


def test_typical_component_set_is_fast() -> None:
    rules: list[dict[str, Any]] = [
        {"methods": ["Control.Get", "Component.Get", "ChangeGroup.*", "StatusGet"]},
        {"methods": ["Snapshot.Load"], "components": ["Hall*"]},
        ZONE_RULE,
    ]
    p = policy(*rules)
    params = parse_params(
        "Component.Set",
        cset("Zone4", {"Name": "gain", "Value": -12}, {"Name": "mute", "Value": False}),
    )
    assert p.authorize("panel", "Component.Set", params).allowed
    n = 5000
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            p.authorize("panel", "Component.Set", params)
        best = min(best, (time.perf_counter() - start) / n)
    assert best < 50e-6, f"{best * 1e6:.1f} µs per Component.Set"


# ---- properties ----------------------------------------------------------------------------

names = st.text(alphabet="abcXYZ019 .-_*?", min_size=1, max_size=12)
glob_lists = st.lists(names, min_size=1, max_size=3)
rule_dicts = st.fixed_dictionaries(
    {
        "methods": st.lists(
            st.sampled_from(["Component.Set", "Component.*", "*", "Control.Set"]), min_size=1
        ),
        "components": glob_lists,
        "controls": glob_lists,
    },
    optional={
        "valueRange": st.builds(
            lambda a, b: {"min": min(a, b), "max": max(a, b)},
            st.integers(-100, 100),
            st.integers(-100, 100),
        )
    },
)
writes = st.lists(
    st.fixed_dictionaries(
        {"Name": names},
        optional={"Value": st.integers(-200, 200) | st.booleans()},
    ).map(lambda c: c if "Value" in c else {**c, "Position": 0.5}),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(rule_dicts, max_size=3), rule_dicts, names, writes)
def test_adding_a_rule_never_revokes_and_deny_by_default_holds(
    rules: list[dict[str, Any]], extra: dict[str, Any], component: str, controls: Any
) -> None:
    raw = cset(component, *controls)
    before = call(policy(*rules), "Component.Set", raw)
    after = call(policy(*rules, extra), "Component.Set", raw)
    if before.allowed:
        assert after.allowed  # rules only ever add permissions
    if not rules:
        assert not before.allowed


@settings(max_examples=200, deadline=None)
@given(st.lists(rule_dicts, min_size=1, max_size=3), names, writes)
def test_allowed_iff_every_control_is_allowed_alone(
    rules: list[dict[str, Any]], component: str, controls: Any
) -> None:
    p = policy(*rules)
    together = call(p, "Component.Set", cset(component, *controls)).allowed
    alone = [call(p, "Component.Set", cset(component, c)).allowed for c in controls]
    assert together == all(alone)


@settings(max_examples=100, deadline=None)
@given(st.lists(rule_dicts, min_size=1, max_size=3), names, st.integers(-200, 200))
def test_unrelated_rules_do_not_allow_a_denied_target(
    rules: list[dict[str, Any]], control: str, value: int
) -> None:
    raw = cset("Zone1", {"Name": control, "Value": value})
    base = call(policy(*rules), "Component.Set", raw)
    unrelated: list[dict[str, Any]] = [
        {"methods": ["Component.Get", "Snapshot.*", "StatusGet"]},
        {"methods": ["Component.Set"], "components": ["Other*"]},
        {"methods": ["Mixer.SetCrossPointGain"]},
    ]
    assert call(policy(*rules, *unrelated), "Component.Set", raw).allowed == base.allowed


def test_rule_model_is_used_as_is() -> None:
    rule = Rule(methods=["Control.Set"], valueRange=ValueRange(min=0, max=1))
    p = Policy([SubjectConfig(name="x", tokenSha256="0" * 64, rules=[rule])])
    assert call(p, "Control.Set", {"Name": "G", "Value": 1}, subject="x").allowed
    assert not call(p, "Control.Set", {"Name": "G", "Value": 2}, subject="x").allowed


def test_can_read_follows_the_get_rules() -> None:
    p = policy(
        {"methods": ["ChangeGroup.*"]},
        {"methods": ["Component.Get"], "components": ["Zone*"], "controls": ["gain"]},
        {"methods": ["Control.Get"], "components": ["*"], "controls": ["Lobby*"]},
    )
    assert p.can_read("panel", "Zone1", "gain")
    assert not p.can_read("panel", "Zone1", "mute")
    assert not p.can_read("panel", "Lobby", "gain")
    assert p.can_read("panel", "", "LobbyMusicLevel")
    assert not p.can_read("panel", "", "MainGain")
    assert not p.can_read("nobody", "Zone1", "gain")
    # the ChangeGroup.* rule alone grants no read
    assert not policy({"methods": ["ChangeGroup.*"]}).can_read("panel", "Zone1", "gain")


def test_the_component_list_is_cut_to_readable_components() -> None:
    p = policy(
        {"methods": ["Component.GetComponents"]},
        {"methods": ["Component.Get"], "components": ["Zone*"], "controls": ["gain"]},
        {"methods": ["Component.GetControls"], "components": ["Mixer"]},
        {"methods": ["Component.Set"], "components": ["Amp"]},
    )
    design = [{"Name": n, "Type": "t"} for n in ("Zone1", "Zone2", "Mixer", "Amp", "Lobby")]
    shown = p.visible_components("panel", design)
    assert shown == [{"Name": "Zone1", "Type": "t"}, {"Name": "Zone2", "Type": "t"}, design[2]]
    assert shown is not design
    assert p.visible_components("nobody", design) == []
    assert p.visible_components("panel", [{"Type": "x"}, "junk", {"Name": 5}]) == []
    assert p.visible_components("panel", {"not": "a list"}) == {"not": "a list"}


def test_a_write_refused_for_its_value_alone_names_the_widest_range() -> None:
    p = policy(ZONE_RULE, {**ZONE_RULE, "components": ["Zone1"], "valueRange": {"min": -80}})
    d = call(p, "Component.Set", cset("Zone2", {"Name": "gain", "Value": 6}))
    assert not d.allowed
    assert d.reason == "no rule allows Zone2.gain"  # what the client is told is unchanged
    assert d.out_of_range == OutOfRange("Zone2", "gain", 6, -60, 0)
    wide = call(p, "Component.Set", cset("Zone1", {"Name": "gain", "Value": -90}))
    assert not wide.allowed
    assert wide.out_of_range == OutOfRange("Zone1", "gain", -90, -80, None)
    # no rule names it, or no number: not a matter of range
    for refused in (
        cset("Lobby", {"Name": "gain", "Value": 6}),
        cset("Zone2", {"Name": "other", "Value": -10}),
        cset("Zone2", {"Name": "gain", "String": "-10dB"}),
    ):
        d = call(p, "Component.Set", refused)
        assert not d.allowed
        assert d.out_of_range is None
    assert call(p, "Component.Set", cset("Zone2", {"Name": "gain", "Value": -6})).allowed


def test_literal_components_of_a_method_leave_globs_out() -> None:
    p = policy(
        {"methods": ["Snapshot.*"], "components": ["Presets", "Scenes*", "Lobby"]},
        {"methods": ["Snapshot.Load"], "components": ["Presets", "Night[12]", "Day"]},
        {"methods": ["Component.Get"], "components": ["Amp"]},
    )
    assert p.literal_components("panel", "Snapshot.Load") == ["Presets", "Lobby", "Day"]
    assert p.literal_components("panel", "Snapshot.Save") == ["Presets", "Lobby"]
    assert p.literal_components("nobody", "Snapshot.Load") == []


# ---- remembered read decisions ------------------------------------------------


def test_read_decisions_are_remembered_bounded_and_equal_to_fresh_ones() -> None:
    rules = (
        {"methods": ["Control.Get"], "controls": ["Main*"]},
        {"methods": ["Component.Get"], "components": ["Zone1"], "controls": ["gain"]},
    )
    p = policy(*rules)
    reads = [
        ("Control.Get", ["MainGain"]),
        ("Control.Get", ["MainGain", "Secret"]),
        ("Component.Get", {"Name": "Zone1", "Controls": [{"Name": "gain"}]}),
        ("Component.Get", {"Name": "Zone1", "Controls": [{"Name": "mute"}]}),
        ("Component.Get", {"Name": "Zone2", "Controls": [{"Name": "gain"}]}),
    ]
    for method, raw in reads * 2:
        assert call(p, method, raw) == call(policy(*rules), method, raw)
    assert [call(p, m, r).allowed for m, r in reads] == [True, False, True, False, False]
    # a read of many controls is judged afresh; the memo never grows past its bound
    many = [f"Main{i}" for i in range(policy_module.READ_MEMO_NAMES + 1)]
    assert call(p, "Control.Get", many).allowed
    for i in range(policy_module.READ_MEMO_SIZE + 10):
        assert not call(p, "Control.Get", [f"Other{i}"]).allowed
    assert 0 < len(p._subjects["panel"].reads) <= policy_module.READ_MEMO_SIZE
