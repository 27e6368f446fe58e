"""Pure parts of the shared rate limit and the upstream shares: bucket keys, Sentinel
URIs, and each subject's share of the calls pending on the Core."""

from __future__ import annotations

import asyncio

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


async def test_a_subject_waits_for_its_own_share_in_order() -> None:
    shares = SubjectShares(2)
    assert await shares.acquire("flood", 1)
    assert await shares.acquire("flood", 1)
    # Full for "flood", not for anyone else.
    assert await shares.acquire("calm", 0.01)
    order: list[int] = []

    async def queued(n: int) -> None:
        assert await shares.acquire("flood", 5)
        order.append(n)

    waiting = [asyncio.create_task(queued(n)) for n in range(3)]
    await asyncio.sleep(0.01)
    assert order == []
    shares.release("flood")
    shares.release("flood")
    await asyncio.sleep(0.01)
    assert order == [0, 1]
    assert shares.pending("flood") == 2
    shares.release("flood")
    await asyncio.gather(*waiting)
    assert order == [0, 1, 2]
    for _ in range(2):
        shares.release("flood")
    shares.release("calm")
    assert shares.pending("flood") == shares.pending("calm") == 0


async def test_a_wait_that_times_out_or_is_cancelled_leaves_no_slot_behind() -> None:
    shares = SubjectShares(1)
    assert await shares.acquire("s", 1)
    assert not await shares.acquire("s", 0.02)
    cancelled = asyncio.create_task(shares.acquire("s", 5))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    shares.release("s")
    assert shares.pending("s") == 0
    assert await shares.acquire("s", 0.01)
