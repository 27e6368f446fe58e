"""Hand-rolled clients for attack tests: sockets that misbehave in ways real libraries
never do (never read, trickle bytes), all on loopback, all closed by their caller."""

from __future__ import annotations

import base64
import os
import socket
import struct
from pathlib import Path
from typing import Any

import orjson

LOOPBACK = "127.0.0.1"


def ws_frame(
    payload: bytes,
    opcode: int = 0x1,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """One client frame (RFC 6455): masked, final and exact unless told otherwise
    (`length` announces another payload length than the payload's)."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload) if length is None else length
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_handshake(port: int, token: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"GET /v1/ws HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{auth}\r\n"
    ).encode()


def ws_connect(
    port: int,
    token: str | None,
    *,
    rcvbuf: int | None = None,
    source: str = LOOPBACK,
    first: bytes = b"",
) -> socket.socket:
    """A blocking WebSocket handshake on a raw socket (with `first` in the same segment);
    returns the socket after the 101."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect((LOOPBACK, port))
    sock.sendall(ws_handshake(port, token) + first)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"handshake refused: {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {head.splitlines()[0]!r}")
    return sock


def ws_send_json(sock: socket.socket, obj: Any) -> None:
    sock.sendall(ws_frame(orjson.dumps(obj)))


def ws_close_code(sock: socket.socket, timeout: float = 15.0) -> int | None:
    """Read until the server's close frame and return its code (None: reset or EOF first)."""
    sock.settimeout(timeout)
    buf = b""
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return None
            buf += chunk
            while len(buf) >= 2:
                opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
                offset = 2
                if n == 126:
                    if len(buf) < 4:
                        break
                    n, offset = struct.unpack("!H", buf[2:4])[0], 4
                elif n == 127:
                    if len(buf) < 10:
                        break
                    n, offset = struct.unpack("!Q", buf[2:10])[0], 10
                if len(buf) < offset + n:
                    break
                payload, buf = buf[offset : offset + n], buf[offset + n :]
                if opcode == 0x8:
                    return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005
    except (ConnectionResetError, TimeoutError, OSError):
        return None


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
