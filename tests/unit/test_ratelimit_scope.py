"""Pure parts of the shared rate limit and the upstream shares: bucket keys, Sentinel
URIs, and each subject's share of the calls pending on the Core."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from qsys_gateway.ratelimit import SentinelUri, bucket_scope, parse_sentinel_uri
from qsys_gateway.upstream.shares import SubjectShares
from qsys_protocol.config import parse_config


def test_buckets_are_scoped_by_the_core_when_the_config_names_one() -> None:
    plain = parse_config({"core": {"host": "192.0.2.1"}})
    assert bucket_scope(plain) == ""
    named = parse_config(
        {"core": {"host": "192.0.2.1"}, "qsysCore": {"namespace": "av", "name": "hall"}}
    )
    assert bucket_scope(named) == "av/hall/"


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("redis+sentinel://s1:26380/qsys", SentinelUri((("s1", 26380),), "qsys")),
        (
            "redis+sentinel://s1,10.0.0.2:26381,[::1]/qsys/3",
            SentinelUri((("s1", 26379), ("10.0.0.2", 26381), ("::1", 26379)), "qsys", 3),
        ),
        (
            "redis+sentinel://user:p%40ss@s1:26379/qsys",
            SentinelUri((("s1", 26379),), "qsys", 0, "user", "p@ss"),
        ),
        (
            "redis+sentinel://:secret@s1/qsys",
            SentinelUri((("s1", 26379),), "qsys", 0, None, "secret"),
        ),
    ],
)
def test_sentinel_uris_parse_as_the_limits_library_spells_them(
    uri: str, parsed: SentinelUri
) -> None:
    assert parse_sentinel_uri(uri) == parsed


@pytest.mark.parametrize(
    "uri", ["redis://s1/qsys", "redis+sentinel://s1:26379", "redis+sentinel://s1:0/q"]
)
def test_bad_sentinel_uris_are_refused(uri: str) -> None:
    with pytest.raises(ValueError, match=r"redis\+sentinel|primary|port"):
        parse_sentinel_uri(uri)


def _taker(took: list[Any], name: Any) -> Callable[[], bool]:
    """A waiter that takes the slot it is handed, noting `name` in `took`."""

    def granted() -> bool:
        took.append(name)
        return True

    return granted


def test_a_subject_waits_for_its_own_share_in_order() -> None:
    shares = SubjectShares(2)
    assert shares.try_acquire("flood")
    assert shares.try_acquire("flood")
    # Full for "flood", not for anyone else.
    assert not shares.try_acquire("flood")
    assert shares.try_acquire("calm")
    order: list[Any] = []
    for n in range(3):
        shares.wait("flood", _taker(order, n))
    assert shares.waiting("flood") == 3
    assert not shares.try_acquire("flood")  # nobody jumps the queue
    shares.release("flood")
    shares.release("flood")
    assert order == [0, 1]
    assert shares.pending("flood") == 2
    shares.release("flood")
    assert order == [0, 1, 2]
    assert shares.waiting("flood") == 0
    for _ in range(2):
        shares.release("flood")
    shares.release("calm")
    assert shares.pending("flood") == shares.pending("calm") == 0


def test_a_waiter_that_left_leaves_no_slot_behind() -> None:
    """One that timed out or was cancelled is forgotten, or declines the slot it is
    handed: the slot goes to the next waiter, or back."""
    shares = SubjectShares(1)
    assert shares.try_acquire("s")
    took: list[Any] = []

    def left() -> bool:  # a waiter that no longer wants the slot
        return False

    forgotten = _taker(took, "forgotten")
    shares.wait("s", left)
    shares.wait("s", forgotten)
    shares.wait("s", _taker(took, "next"))
    shares.forget("s", forgotten)
    shares.release("s")
    assert took == ["next"]
    assert shares.pending("s") == 1
    shares.wait("s", left)
    shares.release("s")
    assert shares.pending("s") == 0
    assert shares.waiting("s") == 0
    assert shares.try_acquire("s")
