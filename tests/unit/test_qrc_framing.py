"""NUL framing: split and coalesced frames, size limit, and round trips (hypothesis)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsys_protocol.qrc.framing import FRAME_TOO_LARGE, FrameDecoder, encode_frame

# JSON values orjson can round-trip exactly (no NaN/inf, ints within 64 bits).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=8,
)
messages = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


def feed_in_chunks(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[object]:
    frames: list[object] = []
    start = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        frames += decoder.feed(data[start:cut])
        start = cut
    return frames


def test_encode_frame_is_json_plus_one_nul() -> None:
    data = encode_frame({"jsonrpc": "2.0", "method": "NoOp", "params": {}, "id": 1})
    assert data.endswith(b"\x00")
    assert data.count(b"\x00") == 1
    assert orjson.loads(data[:-1]) == {"jsonrpc": "2.0", "method": "NoOp", "params": {}, "id": 1}


def test_many_frames_in_one_read() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b'{"a":1}\x00{"b":2}\x00{"c":3}\x00') == [
        b'{"a":1}',
        b'{"b":2}',
        b'{"c":3}',
    ]
    assert decoder.buffered == 0


def test_frame_split_byte_by_byte() -> None:
    decoder = FrameDecoder()
    data = b'{"method":"NoOp","id":7}\x00'
    out: list[object] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    assert out == [data[:-1]]


def test_partial_frame_is_kept_until_its_nul() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b'{"a":1}\x00{"b"') == [b'{"a":1}']
    assert decoder.buffered == 4
    assert decoder.feed(b":2}\x00") == [b'{"b":2}']
    assert decoder.buffered == 0


def test_empty_and_blank_frames_are_skipped() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00\x00 \r\n\x00{}\x00") == [b"{}"]


def test_frame_exactly_at_limit_passes_and_one_over_is_too_large() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    assert decoder.feed(b"x" * 10 + b"\x00") == [b"x" * 10]
    assert decoder.feed(b"y" * 11 + b"\x00") == [FRAME_TOO_LARGE]
    # The decoder recovers at the next frame.
    assert decoder.feed(b"{}\x00") == [b"{}"]


def test_oversized_frame_arriving_in_pieces_is_reported_once_and_discarded() -> None:
    decoder = FrameDecoder(max_frame_bytes=16)
    out: list[object] = []
    for _ in range(100):
        out += decoder.feed(b"z" * 7)
        assert decoder.buffered <= 16
    assert out == [FRAME_TOO_LARGE]
    assert decoder.feed(b'zz\x00{"ok":1}\x00') == [b'{"ok":1}']


def test_max_frame_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        FrameDecoder(0)


@settings(max_examples=100, deadline=None)
@given(st.lists(messages, min_size=1, max_size=5), st.lists(st.integers(0, 10_000), max_size=10))
def test_round_trip_under_any_chunking(msgs: list[dict[str, object]], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    frames = feed_in_chunks(FrameDecoder(), stream, cuts)
    assert [orjson.loads(f) for f in frames if isinstance(f, bytes)] == msgs
    assert len(frames) == len(msgs)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\x00", b"")), max_size=10),
    st.lists(st.integers(0, 10_000), max_size=10),
    st.integers(1, 32),
)
def test_arbitrary_bytes_never_crash_and_respect_the_limit(
    payloads: list[bytes], cuts: list[int], limit: int
) -> None:
    stream = b"\x00".join(payloads) + b"\x00"
    decoder = FrameDecoder(limit)
    frames = feed_in_chunks(decoder, stream, cuts)
    expected = [
        p if len(p) <= limit else FRAME_TOO_LARGE for p in payloads if len(p) > limit or p.strip()
    ]
    assert frames == expected
    assert decoder.buffered == 0
