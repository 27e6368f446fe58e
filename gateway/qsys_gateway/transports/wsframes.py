"""RFC 6455 framing for the server side of a WebSocket, after the handshake.

The gateway reads client frames itself (`FrameReader`) instead of through aiohttp's
`WebSocketResponse`, so a connection holds no request, parser or queue of aiohttp's once
it is upgraded. No extension is negotiated (no permessage-deflate), so RSV bits are a
protocol error. wsproto, the pure-Python reference, parses a small frame for about ten
times the CPU of this reader; the unit tests check this one against it.
"""

from __future__ import annotations

import struct
from typing import Final

TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA
_CONTINUATION: Final = 0x0

NORMAL_CLOSURE: Final = 1000
GOING_AWAY: Final = 1001
PROTOCOL_ERROR: Final = 1002
NO_STATUS: Final = 1005
INVALID_DATA: Final = 1007
POLICY_VIOLATION: Final = 1008
MESSAGE_TOO_BIG: Final = 1009

_LEN16 = struct.Struct("!BBH").pack
_LEN64 = struct.Struct("!BBQ").pack
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


class WsError(Exception):
    """A frame the connection must be closed for, with this close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.frames: list[tuple[int, bytes | str]] = []
        """What `feed` read before the bad frame (answered before the close)."""


def text_frame_header(size: int) -> bytes:
    """The header of a final, unmasked, uncompressed text frame of `size` bytes."""
    if size < 126:
        return bytes((0x81, size))
    if size < 65536:
        return _LEN16(0x81, 126, size)
    return _LEN64(0x81, 127, size)


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """An unmasked control frame (at most 125 bytes of payload: longer is cut)."""
    payload = payload[:125]
    return bytes((0x80 | opcode, len(payload))) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return control_frame(CLOSE, _U16.pack(code) + reason.encode()[:123])


def _valid_close_code(code: int) -> bool:
    """The codes a peer may send: RFC 6455's and IANA's registered ones (1012-1014, as
    the `websockets` and `ws` libraries send and accept), and 3000-4999."""
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or (3000 <= code <= 4999)


def unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class FrameReader:
    """Client frames in, whole messages and control frames out.

    `feed` returns `(opcode, payload)` pairs: TEXT with a `str` (UTF-8 checked), BINARY
    with bytes, PING and PONG with their payload, CLOSE with `(code, reason)` packed as
    the close frame's payload (`close_reason` unpacks it). It raises `WsError` for an
    unmasked, reserved, oversized or malformed frame. A frame or message over
    `max_size` is refused from its header, before its payload is buffered, so a
    connection never holds more than `max_size` plus one header of unread bytes; the
    fragments of a message are joined as they arrive (a message of many tiny or empty
    fragments holds its bytes, not an object per fragment).
    """

    __slots__ = ("_buf", "_kind", "_parts", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf: bytearray | None = None
        """Bytes of a frame not complete yet."""
        self._parts: bytearray | None = None
        """The fragments so far of a message in progress (None between messages)."""
        self._kind = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes | str]]:
        held = self._buf
        buf: bytes | bytearray = data
        if held is not None:
            held += data  # amortised: a frame trickled in small pieces is not copied again
            buf = held
        out: list[tuple[int, bytes | str]] = []
        end = len(buf)
        try:
            pos = self._frames(buf, end, out)
        except WsError as err:
            err.frames = out
            raise
        if pos >= end:
            self._buf = None
        elif held is not None:
            del held[:pos]
        else:
            self._buf = bytearray(buf[pos:])
        return out

    def _frames(self, buf: bytes | bytearray, end: int, out: list[tuple[int, bytes | str]]) -> int:
        """The whole frames of `buf` into `out`; returns where the first incomplete one
        starts."""
        pos = 0
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b0 & 0x70:
                raise WsError(PROTOCOL_ERROR, "reserved bits set (no extension negotiated)")
            if not b1 & 0x80:
                raise WsError(PROTOCOL_ERROR, "client frame not masked")
            opcode = b0 & 0x0F
            size = b1 & 0x7F
            head = pos + 2
            if size == 126:
                if end - head < 2:
                    break
                size = _U16.unpack_from(buf, head)[0]
                head += 2
            elif size == 127:
                if end - head < 8:
                    break
                size = _U64.unpack_from(buf, head)[0]
                head += 8
                if size >> 63:
                    raise WsError(PROTOCOL_ERROR, "64-bit length with its high bit set")
            if opcode >= 0x8:
                if not b0 & 0x80 or size > 125:
                    raise WsError(PROTOCOL_ERROR, "fragmented or long control frame")
                if opcode > PONG:
                    raise WsError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            elif opcode > BINARY:
                raise WsError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            elif size > self.max_size - (len(self._parts) if self._parts is not None else 0):
                raise WsError(MESSAGE_TOO_BIG, "message too big")
            start = head + 4
            if end - start < size:
                break
            payload = unmask(bytes(buf[start : start + size]), bytes(buf[head:start]))
            pos = start + size
            if opcode >= 0x8:
                out.append((opcode, _checked_close(payload) if opcode == CLOSE else payload))
                if opcode == CLOSE:
                    pos = end  # nothing after a close frame is read
                continue
            self._message(opcode, bool(b0 & 0x80), payload, out)
        return pos

    def _message(
        self, opcode: int, fin: bool, payload: bytes, out: list[tuple[int, bytes | str]]
    ) -> None:
        parts = self._parts
        data: bytes | bytearray
        if opcode == _CONTINUATION:
            if parts is None:
                raise WsError(PROTOCOL_ERROR, "continuation frame without a message")
            parts += payload
            if not fin:
                return
            kind, data = self._kind, parts
            self._parts = None
        elif parts is not None:
            raise WsError(PROTOCOL_ERROR, "new message inside a fragmented one")
        elif not fin:
            self._parts = bytearray(payload)
            self._kind = opcode
            return
        else:
            kind, data = opcode, payload
        if kind == TEXT:
            try:
                out.append((TEXT, data.decode()))
            except UnicodeDecodeError:
                raise WsError(INVALID_DATA, "text message is not UTF-8") from None
        else:
            out.append((BINARY, bytes(data)))


def _checked_close(payload: bytes) -> bytes:
    if not payload:
        return payload
    if len(payload) == 1:
        raise WsError(PROTOCOL_ERROR, "close frame with a 1-byte payload")
    if not _valid_close_code(_U16.unpack_from(payload)[0]):
        raise WsError(PROTOCOL_ERROR, "invalid close code")
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        raise WsError(INVALID_DATA, "close reason is not UTF-8") from None
    return payload


def close_reason(payload: bytes) -> tuple[int, str]:
    """A checked close frame's payload as (code, reason); 1005 when it had none."""
    if not payload:
        return NO_STATUS, ""
    return _U16.unpack_from(payload)[0], payload[2:].decode()
