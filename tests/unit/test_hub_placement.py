"""The hub's placement of controls into Core change groups and its cache (pure)."""

from __future__ import annotations

import pytest

from qsys_gateway.upstream.hubcache import Entry, HubCache
from qsys_gateway.upstream.placement import CoreGroup, add_calls, free_room, pack
from qsys_protocol.qrc.errors import ErrorCode, QrcError
from qsys_protocol.qrc.methods import MAX_ITEMS


def keys(n: int, component: str = "Amp") -> list[tuple[str, str]]:
    return [(component, f"c{i}") for i in range(n)]


def place(groups: list[CoreGroup], wanted: list[tuple[str, str]], per_group: int) -> list[int]:
    sizes = []
    for group, chunk in pack(groups, wanted, per_group):
        group.keys.update(chunk)
        sizes.append(len(chunk))
    return sizes


def test_pack_fills_groups_in_slot_order_and_makes_new_ones() -> None:
    groups: list[CoreGroup] = []
    assert place(groups, keys(5), 3) == [3, 2]
    assert [g.id for g in groups] == ["gw.hub.0", "gw.hub.1"]
    # the room left in group 1 is used before a third group is made
    assert place(groups, keys(3, "Mixer"), 3) == [1, 2]
    assert [len(g.keys) for g in groups] == [3, 3, 2]


def test_pack_reuses_room_freed_in_an_early_group() -> None:
    groups: list[CoreGroup] = []
    place(groups, keys(6), 3)
    groups[0].keys.discard(("Amp", "c0"))
    assert place(groups, [("Amp", "new")], 3) == [1]
    assert ("Amp", "new") in groups[0].keys


def test_free_room_counts_groups_not_yet_made() -> None:
    groups: list[CoreGroup] = []
    assert free_room(groups, 4, 10) == 40
    place(groups, keys(15), 10)
    assert free_room(groups, 4, 10) == 25


def test_add_calls_named_controls_then_one_call_per_component_chunk() -> None:
    wanted = [("", "LobbyLevel"), ("Amp", "gain"), ("Mixer", "mute"), ("Amp", "mute")]
    calls = add_calls("gw.hub.0", wanted)
    assert calls[0] == ("ChangeGroup.AddControl", {"Id": "gw.hub.0", "Controls": ["LobbyLevel"]})
    assert calls[1][0] == "ChangeGroup.AddComponentControl"
    amp = calls[1][1]["Component"]
    assert amp == {"Name": "Amp", "Controls": [{"Name": "gain"}, {"Name": "mute"}]}
    assert calls[2][1]["Component"]["Name"] == "Mixer"
    big = add_calls("g", keys(MAX_ITEMS + 1))
    assert [len(c[1]["Component"]["Controls"]) for c in big] == [MAX_ITEMS, 1]


def test_cache_share_references_and_versions() -> None:
    cache = HubCache(per_subject=2)

    for k in keys(3):
        cache.entries[k] = Entry(k)
    cache.check_share("panel", keys(2))
    cache.hold("panel", keys(2))
    with pytest.raises(QrcError) as err:
        cache.check_share("panel", keys(3))
    assert err.value.code == ErrorCode.CHANGE_GROUPS_EXHAUSTED
    cache.check_share("panel", keys(2))  # what it holds already is no more
    assert cache.live == 2
    cache.apply([{"Component": "Amp", "Name": "c0", "Value": 1}])
    first = cache.version
    # after the groups are re-made, the Core's dump of the same value is no change
    cache.entries[("Amp", "c0")].initial = True
    cache.apply([{"Component": "Amp", "Name": "c0", "Value": 1}])
    assert cache.version == first
    cache.apply([{"Component": "Amp", "Name": "c0", "Value": 2}])
    assert cache.entries[("Amp", "c0")].version > first
    cache.drop("panel", keys(2))
    assert cache.live == 0
    cache.prune()
    assert cache.entries == {}
