"""RFC 6455 on the gateway's own WebSocket reader (`transports/wsframes.py`,
`transports/websocket.py`), over real sockets to a real gateway in front of the
simulator: malformed frames, the close handshake both ways, fragmentation, clients
that ping without reading, and clients from the `websockets` (Python) and `ws` (Node)
libraries."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from typing import Any

import orjson
import pytest
import websockets
from gateway_harness import ADMIN_TOKEN, GatewayFactory
from rawclients import rss_bytes, ws_connect, ws_frame
from test_gateway_qrwc import JS_DIR, node

from qsys_testkit import GatewayProcess

CLOSE, PING, PONG = 0x8, 0x9, 0xA
NOOP = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "NoOp", "params": {}})
BIG = 65536
"""`maxMessageBytes` of `base_config`."""


class Seen:
    """What the gateway wrote on a raw socket: frames, and how the socket ended."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self.end: str | None = None
        """'eof', 'reset' or None (still open at the deadline)."""
        self.ended_after = 0.0

    @property
    def close(self) -> tuple[int, str] | None:
        for opcode, payload in self.frames:
            if opcode == CLOSE:
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()
        return None

    @property
    def answers(self) -> list[Any]:
        messages = [orjson.loads(p) for op, p in self.frames if op == 0x1]
        return [m for m in messages if m.get("method") != "EngineStatus"]


def read_frames(sock: socket.socket, timeout: float, *, until_close: bool = False) -> Seen:
    """Server frames until EOF, a reset, `timeout`, or (`until_close`) its close frame."""
    seen = Seen()
    buf = b""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return seen
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            return seen
        except ConnectionResetError:
            seen.end, seen.ended_after = "reset", time.monotonic() - started
            return seen
        if not chunk:
            seen.end, seen.ended_after = "eof", time.monotonic() - started
            return seen
        buf += chunk
        while len(buf) >= 2:
            n, offset = buf[1] & 0x7F, 2
            if n == 126:
                n, offset = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                n, offset = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < offset + n:
                break
            seen.frames.append((buf[0] & 0x0F, buf[offset : offset + n]))
            buf = buf[offset + n :]
            if until_close and seen.frames[-1][0] == CLOSE:
                return seen


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


BAD_FRAMES = [
    pytest.param(ws_frame(NOOP, masked=False), 1002, id="unmasked"),
    pytest.param(ws_frame(NOOP, rsv=0x40), 1002, id="rsv1-without-extension"),
    pytest.param(ws_frame(NOOP, rsv=0x10), 1002, id="rsv3"),
    pytest.param(ws_frame(b"x", opcode=0x3), 1002, id="reserved-data-opcode"),
    pytest.param(ws_frame(b"", opcode=0xB), 1002, id="reserved-control-opcode"),
    pytest.param(ws_frame(b"p", opcode=PING, fin=False), 1002, id="fragmented-ping"),
    pytest.param(ws_frame(b"p" * 126, opcode=PING), 1002, id="ping-over-125"),
    pytest.param(ws_frame(close_payload(1000, b"x" * 124), opcode=CLOSE), 1002, id="long-close"),
    pytest.param(ws_frame(b"x", opcode=0x0), 1002, id="continuation-without-start"),
    pytest.param(
        ws_frame(NOOP[:5], fin=False) + ws_frame(NOOP), 1002, id="new-message-inside-fragmented"
    ),
    pytest.param(ws_frame(b"\x03", opcode=CLOSE), 1002, id="close-1-byte"),
    pytest.param(ws_frame(close_payload(999), opcode=CLOSE), 1002, id="close-code-999"),
    pytest.param(ws_frame(close_payload(1005), opcode=CLOSE), 1002, id="close-code-1005"),
    pytest.param(ws_frame(close_payload(2000), opcode=CLOSE), 1002, id="close-code-2000"),
    pytest.param(
        ws_frame(close_payload(1000, b"\xff"), opcode=CLOSE), 1007, id="close-reason-utf8"
    ),
    pytest.param(ws_frame(b'"\xc3\x28"'), 1007, id="text-not-utf8"),
    pytest.param(
        ws_frame(b'"\xe2\x82', fin=False) + ws_frame(b'"', opcode=0x0), 1007, id="truncated-utf8"
    ),
    pytest.param(
        bytes((0x81, 0xFF)) + struct.pack("!Q", 1 << 63) + b"mask", 1002, id="length-high-bit"
    ),
    pytest.param(
        bytes((0x81, 0xFF)) + struct.pack("!Q", 1 << 40) + b"mask", 1009, id="length-over-max"
    ),
    pytest.param(
        ws_frame(b"x" * 40000, fin=False) + ws_frame(b"x" * 30000, opcode=0x0),
        1009,
        id="fragments-over-max",
    ),
]


@pytest.mark.parametrize(("bad", "code"), BAD_FRAMES)
def test_a_bad_frame_fails_the_connection_cleanly(
    shared_gateway: GatewayProcess, bad: bytes, code: int
) -> None:
    """The call before the bad frame (same segment) is answered; then the close frame
    with the right code, and the gateway ends its side at once (FIN, not a reset five
    seconds later), even though the client's close reply is still to come."""
    sock = ws_connect(shared_gateway.http_port, ADMIN_TOKEN)
    try:
        sock.sendall(ws_frame(NOOP) + bad)
        seen = read_frames(sock, 3.0)
        assert seen.close is not None, seen.frames
        assert seen.close[0] == code, seen.frames
        assert [a.get("result") for a in seen.answers] == [True]
        assert (seen.end, seen.ended_after < 2.0) == ("eof", True), seen.end
        sock.sendall(ws_frame(close_payload(code), opcode=CLOSE))  # lands on a closing socket
    finally:
        sock.close()


def test_the_client_close_handshake(shared_gateway: GatewayProcess) -> None:
    """Client close (any code a library may send, IANA's 1012-1014 included): the gateway
    echoes it and closes TCP; frames after the close are not run."""
    for code in (1000, 1001, 1012, 1013, 4000):
        sock = ws_connect(shared_gateway.http_port, ADMIN_TOKEN)
        try:
            sock.sendall(
                ws_frame(close_payload(code, "bye ✓".encode()), opcode=CLOSE) + ws_frame(NOOP)
            )
            seen = read_frames(sock, 3.0)
            assert (seen.close, seen.end) == ((code, ""), "eof"), (code, seen.frames)
            assert seen.answers == []
        finally:
            sock.close()
    sock = ws_connect(shared_gateway.http_port, ADMIN_TOKEN)
    try:
        sock.sendall(ws_frame(b"", opcode=CLOSE))
        seen = read_frames(sock, 3.0)
        assert (seen.close, seen.end) == ((1000, ""), "eof")
    finally:
        sock.close()


def test_the_server_close_handshake(make_gateway: GatewayFactory, module_sim_port: int) -> None:
    """The gateway closes (logon timeout, 1008); the client's close reply ends the
    connection at once, well before the gateway's wait for it runs out."""

    def edit(config: dict[str, Any]) -> None:
        config["limits"]["logonTimeoutSeconds"] = 0.5

    gw = make_gateway(module_sim_port, edit)
    sock = ws_connect(gw.http_port, None)
    try:
        seen = read_frames(sock, 5.0, until_close=True)
        assert seen.close == (1008, "logon timeout")
        sock.sendall(ws_frame(close_payload(1008), opcode=CLOSE))
        after = read_frames(sock, 3.0)
        assert (after.frames, after.end, after.ended_after < 1.0) == ([], "eof", True)
    finally:
        sock.close()


def test_fragmentation_ping_and_utf8_across_fragments(shared_gateway: GatewayProcess) -> None:
    text = orjson.dumps({"jsonrpc": "2.0", "id": 2, "method": "NoOp", "params": {"n": "é€😀"}})
    cut = text.index("€".encode()) + 1  # inside the three bytes of the euro sign
    sock = ws_connect(shared_gateway.http_port, ADMIN_TOKEN)
    try:
        sock.sendall(
            ws_frame(text[:cut], fin=False)
            + ws_frame(b"are you there", opcode=PING)
            + ws_frame(b"", opcode=0x0, fin=False)
            + ws_frame(text[cut:], opcode=0x0)
            + ws_frame(NOOP, opcode=0x2)  # binary: JSON-RPC too
        )
        seen = read_frames(sock, 1.5)
        assert (PONG, b"are you there") in seen.frames
        assert sorted((a["id"], a["result"]) for a in seen.answers) == [(1, True), (2, True)]
        assert (seen.close, seen.end) == (None, None)
    finally:
        sock.close()


def test_a_first_frame_in_the_handshake_segment(shared_gateway: GatewayProcess) -> None:
    sock = ws_connect(shared_gateway.http_port, ADMIN_TOKEN, first=ws_frame(NOOP))
    try:
        seen = read_frames(sock, 1.5)
        assert [a["result"] for a in seen.answers] == [True]
    finally:
        sock.close()


def test_many_tiny_fragments_hold_only_their_bytes(
    shared_gateway: GatewayProcess,
) -> None:
    """60,000 one-byte fragments and 1,000,000 empty ones make one message: the gateway
    holds the message's bytes, not an object per fragment, and answers it."""
    gw = shared_gateway
    sock = ws_connect(gw.http_port, ADMIN_TOKEN)
    try:
        read_frames(sock, 0.3)
        sock.settimeout(60)  # about a second of the gateway's CPU, longer on a loaded machine
        before = rss_bytes(gw.pid)
        start = b'{"jsonrpc":"2.0","id":3,"method":"NoOp","params":{},"x":"'
        sock.sendall(ws_frame(start, fin=False))
        sock.sendall(ws_frame(b"x", opcode=0x0, fin=False) * 60000)
        empty = ws_frame(b"", opcode=0x0, fin=False) * 100000
        for _ in range(10):
            sock.sendall(empty)
        sock.sendall(ws_frame(b'"}', opcode=0x0))
        seen = read_frames(sock, 60.0, until_close=True)
        while not seen.answers and seen.end is None and seen.close is None:
            seen = read_frames(sock, 60.0)
        grown = rss_bytes(gw.pid) - before
        assert [a.get("result") for a in seen.answers] == [True], seen.frames[:3]
        assert grown < 2 * 1024 * 1024, f"RSS grew {grown / 1e6:.1f} MB"
    finally:
        sock.close()


def test_pings_from_a_client_that_does_not_read_hold_no_memory(
    shared_gateway: GatewayProcess,
) -> None:
    """A client pings without reading: only the latest ping is answered once its socket
    drains (RFC 6455 5.5.3); the gateway's memory does not grow with the pings."""
    gw = shared_gateway
    sock = ws_connect(gw.http_port, ADMIN_TOKEN, rcvbuf=4096)
    try:
        before = rss_bytes(gw.pid)
        blob = ws_frame(b"p" * 125, opcode=PING) * 2000
        sock.setblocking(False)
        sent, offset, started = 0, 0, time.monotonic()
        while time.monotonic() - started < 4.0:
            try:
                n = sock.send(blob[offset:])
            except BlockingIOError:
                time.sleep(0.005)
                continue
            sent += n
            offset = (offset + n) % len(blob)
        grown = rss_bytes(gw.pid) - before
        assert sent > 10 * 1024 * 1024  # the gateway read them all the while
        assert grown < 16 * 1024 * 1024, f"RSS grew {grown / 1e6:.0f} MB for {sent / 1e6:.0f} MB"
        sock.setblocking(True)
        sock.sendall(blob[offset : offset + (-offset) % 131] + ws_frame(NOOP))
        seen = Seen()
        deadline = time.monotonic() + 20
        while not seen.answers and time.monotonic() < deadline:
            more = read_frames(sock, 2.0)
            seen.frames += more.frames
            assert more.end is None
        assert [a["result"] for a in seen.answers] == [True]
        pongs = sum(op == PONG for op, _ in seen.frames)
        assert 0 < pongs < sent // 131 // 10
    finally:
        sock.close()


async def drain(ws: websockets.ClientConnection) -> None:
    while True:
        await ws.recv()


async def test_the_websockets_library(shared_gateway: GatewayProcess) -> None:
    """Python's `websockets` (its own RFC 6455 checks on what the gateway writes):
    calls, a fragmented message, ping/pong, the close handshake, and 1009."""
    gw = shared_gateway
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with websockets.connect(gw.ws_url, additional_headers=headers, max_size=None) as ws:
        await ws.send(NOOP.decode())
        await ws.send(iter(['{"jsonrpc":"2.0","id":2,', '"method":"NoOp",', '"params":{}}']))
        ids: set[int] = set()
        async with asyncio.timeout(10):
            while ids != {1, 2}:
                msg = orjson.loads(await ws.recv())
                if "id" in msg:
                    ids.add(msg["id"])
        pong = await ws.ping(b"ping-payload")
        await asyncio.wait_for(pong, 5)
        await ws.close(1000, "done")
    assert (ws.close_code, ws.close_reason) == (1000, "")
    assert ws.protocol.close_rcvd is not None
    assert ws.protocol.close_rcvd.code == 1000

    async with websockets.connect(gw.ws_url, additional_headers=headers, max_size=None) as ws:
        await ws.send("x" * (BIG + 1))
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(drain(ws), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


@pytest.mark.parametrize("too_big", [0, BIG + 1])
async def test_the_node_ws_library(shared_gateway: GatewayProcess, too_big: int) -> None:
    """Node's `ws` (the socket under the vendor's QRWC SDK): calls, fragments, ping,
    and the close handshake, 1000 from the client or 1009 from the gateway."""
    proc = await asyncio.create_subprocess_exec(
        node(),
        str(JS_DIR / "ws_client.mjs"),
        shared_gateway.ws_url,
        cwd=JS_DIR,
        env={**os.environ, "WS_TOKEN": ADMIN_TOKEN, "WS_TOO_BIG": str(too_big)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    events = [orjson.loads(line) for line in out.splitlines()]
    assert proc.returncode == 0, (events, err.decode()[-2000:])
    answers = sorted((e["id"], e["result"]) for e in events if e["event"] == "answer")
    assert answers == [(1, True), (2, True)]
    assert {"event": "pong", "payload": "node-ping"} in events
    assert not [e for e in events if e["event"] == "error"], events
    want = (
        {"event": "close", "code": 1009, "reason": "message too big"}
        if too_big
        else {
            "event": "close",
            "code": 1000,
            "reason": "",
        }
    )
    assert events[-1] == want
