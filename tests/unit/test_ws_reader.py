"""The WebSocket frame reader against wsproto (the reference implementation's client
frames in, the same messages out), and the frames it must refuse with a close code."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import CloseReason, FrameProtocol

from qsys_gateway.transports.wsframes import (
    BINARY,
    CLOSE,
    INVALID_DATA,
    MESSAGE_TOO_BIG,
    PING,
    PONG,
    PROTOCOL_ERROR,
    TEXT,
    FrameReader,
    WsError,
    close_frame,
    close_reason,
    control_frame,
)


def client() -> FrameProtocol:
    return FrameProtocol(client=True, extensions=[])


def masked(first: int, payload: bytes, *, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    """A client frame with any first byte (FIN, RSV, opcode) as a peer could send it."""
    n = len(payload)
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = bytes((first, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, 0x80 | 127)) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_all(reader: FrameReader, data: bytes, pieces: list[int]) -> list[tuple[int, object]]:
    out: list[tuple[int, object]] = []
    pos = 0
    for size in pieces:
        out += reader.feed(data[pos : pos + size])
        pos += size
    out += reader.feed(data[pos:])
    return out


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_of_every_length_encoding(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)
    data = bytes(client().send_data(text))
    assert FrameReader(1 << 20).feed(data) == [(TEXT, text)]


@given(
    messages=st.lists(
        st.one_of(st.text(max_size=300), st.binary(max_size=300)), min_size=1, max_size=8
    ),
    fragment=st.integers(min_value=1, max_value=64),
    pieces=st.lists(st.integers(min_value=0, max_value=50), max_size=40),
)
def test_any_split_of_any_fragmentation_gives_the_messages(
    messages: list[str | bytes], fragment: int, pieces: list[int]
) -> None:
    proto = client()
    data = b""
    for message in messages:
        chunks = [message[i : i + fragment] for i in range(0, len(message), fragment)] or [message]
        for i, chunk in enumerate(chunks):
            data += bytes(proto.send_data(chunk, fin=i == len(chunks) - 1))
    data += bytes(proto.ping(b"hi"))
    got = read_all(FrameReader(1 << 20), data, pieces)
    want = [(TEXT if isinstance(m, str) else BINARY, m) for m in messages] + [(PING, b"hi")]
    assert got == want


def test_close_and_pong() -> None:
    proto = client()
    data = bytes(proto.pong(b"p")) + bytes(proto.close(CloseReason.GOING_AWAY, "bye"))
    got = FrameReader(1024).feed(data + b"ignored after the close")
    assert got[0] == (PONG, b"p")
    assert got[1][0] == CLOSE
    assert close_reason(got[1][1]) == (1001, "bye")  # type: ignore[arg-type]
    assert close_reason(FrameReader(16).feed(masked(0x88, b""))[0][1]) == (1005, "")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (bytes((0x81, 0x01)) + b"x", PROTOCOL_ERROR),  # not masked
        (masked(0xC1, b"x"), PROTOCOL_ERROR),  # RSV1 without an extension
        (masked(0x83, b"x"), PROTOCOL_ERROR),  # reserved data opcode
        (masked(0x8B, b""), PROTOCOL_ERROR),  # reserved control opcode
        (masked(0x09, b""), PROTOCOL_ERROR),  # fragmented ping
        (masked(0x89, b"x" * 126), PROTOCOL_ERROR),  # ping over 125 bytes
        (masked(0x80, b"x"), PROTOCOL_ERROR),  # continuation without a message
        (masked(0x01, b"a") + masked(0x81, b"b"), PROTOCOL_ERROR),  # new message inside one
        (masked(0x81, b"\xff\xfe"), INVALID_DATA),  # text not UTF-8
        (masked(0x88, b"\x03"), PROTOCOL_ERROR),  # close with one byte
        (masked(0x88, struct.pack("!H", 1005)), PROTOCOL_ERROR),  # local-only close code
        (masked(0x88, struct.pack("!H", 999)), PROTOCOL_ERROR),
        (masked(0x88, struct.pack("!H", 1000) + b"\xff"), INVALID_DATA),
        (masked(0x88, struct.pack("!H", 1015)), PROTOCOL_ERROR),
        (masked(0x88, struct.pack("!H", 2999)), PROTOCOL_ERROR),
        (bytes((0x81, 0xFF)) + struct.pack("!Q", 1 << 63) + b"mask", PROTOCOL_ERROR),
        (masked(0x81, b"x" * 101), MESSAGE_TOO_BIG),
        (masked(0x01, b"x" * 60) + masked(0x80, b"x" * 41), MESSAGE_TOO_BIG),
    ],
)
def test_refused_frames(frame: bytes, code: int) -> None:
    with pytest.raises(WsError) as err:
        FrameReader(100).feed(frame)
    assert err.value.code == code


def test_an_oversized_frame_is_refused_from_its_header() -> None:
    """A peer announcing 2**62 bytes is refused before any payload is held."""
    head = bytes((0x81, 0x80 | 127)) + struct.pack("!Q", 1 << 62) + b"\x00\x00\x00\x00"
    with pytest.raises(WsError) as err:
        FrameReader(1 << 20).feed(head)
    assert err.value.code == MESSAGE_TOO_BIG


def test_gateway_frames_parse_in_wsproto() -> None:
    """What the gateway writes (unmasked, server side) is what a client library reads."""
    proto = FrameProtocol(client=True, extensions=[])
    proto.receive_bytes(control_frame(PONG, b"x") + close_frame(1008, "logon timeout"))
    frames = list(proto.received_frames())
    assert frames[0].payload == b"x"
    assert frames[1].payload == (CloseReason.POLICY_VIOLATION, "logon timeout")


@pytest.mark.parametrize("code", [1000, 1003, 1011, 1012, 1013, 1014, 3000, 4999])
def test_close_codes_a_peer_may_send(code: int) -> None:
    """RFC 6455's and IANA's registered codes (`websockets` and `ws` send 1012-1014)."""
    got = FrameReader(16).feed(masked(0x88, struct.pack("!H", code)))
    assert close_reason(got[0][1]) == (code, "")  # type: ignore[arg-type]


def test_frames_before_a_bad_one_are_kept() -> None:
    with pytest.raises(WsError) as err:
        FrameReader(100).feed(masked(0x81, b"a") + masked(0x89, b"p") + bytes((0x81, 0x01, 0x78)))
    assert err.value.frames == [(TEXT, "a"), (PING, b"p")]


def test_many_empty_fragments_make_one_message() -> None:
    reader = FrameReader(100)
    data = masked(0x01, b"[") + masked(0x00, b"") * 10000 + masked(0x00, b"1") + masked(0x80, b"]")
    assert reader.feed(data) == [(TEXT, "[1]")]
    assert reader.feed(masked(0x02, b"\x00") + masked(0x80, b"\xff")) == [(BINARY, b"\x00\xff")]
