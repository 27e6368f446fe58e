"""The WebSocket heartbeat of an in-process gateway (its timings shortened): a silent
client is pinged, one that answers stays, one that never answers is closed."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from rawclients import ws_connect, ws_frame

from qsys_core_sim.server import CoreSimulator
from qsys_gateway.app import Gateway
from qsys_gateway.transports import websocket
from qsys_protocol.config import parse_config
from qsys_testkit import LOOPBACK, subject
from qsys_testkit.net import free_port

TOKEN = "heartbeat-token-0123456789abcdef"


@pytest.fixture
async def gateway(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    monkeypatch.setattr(websocket, "HEARTBEAT", 0.5)
    monkeypatch.setattr(websocket, "PONG_WAIT", 0.5)
    async with CoreSimulator(idle_timeout=None) as sim:
        config = parse_config(
            {
                "core": {"host": LOOPBACK, "port": sim.port},
                "listen": {"host": LOOPBACK, "http": free_port(), "metrics": free_port()},
                "subjects": [subject("panel", TOKEN, methods=["*"])],
            }
        )
        gw = Gateway(config)
        await gw.start()
        try:
            yield gw
        finally:
            await gw.shutdown(grace=1.0)


def _frame_size(data: bytes) -> int | None:
    """The length of the server frame at the start of `data`, once it is all there."""
    if len(data) < 2:
        return None
    size, head = data[1] & 0x7F, 2
    if size == 126:
        if len(data) < 4:
            return None
        size, head = int.from_bytes(data[2:4], "big"), 4
    return head + size if len(data) >= head + size else None


def frames_until_closed(sock: socket.socket, seconds: float) -> tuple[list[int], bool]:
    """Opcodes of the frames the gateway sent within `seconds`, answering each ping when
    `sock` is the answering kind; and whether the gateway closed the socket."""
    sock.settimeout(seconds)
    opcodes = []
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
            while (frame := _frame_size(data)) is not None:
                opcodes.append(data[0] & 0x0F)
                data = data[frame:]
    except TimeoutError:
        return opcodes, False
    except ConnectionError:
        pass
    return opcodes, True


async def test_a_silent_client_is_pinged_and_closed_unless_it_answers(gateway: Gateway) -> None:
    port = gateway.runtime.config.listen.http
    quiet = await asyncio.to_thread(ws_connect, port, TOKEN)
    lively = await asyncio.to_thread(ws_connect, port, TOKEN)
    try:

        def answer_pings(seconds: float) -> list[int]:
            lively.settimeout(0.2)
            seen: list[int] = []
            for _ in range(int(seconds / 0.2)):
                try:
                    chunk = lively.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                if b"\x89\x00" in chunk:
                    seen.append(0x9)
                    lively.sendall(ws_frame(b"", opcode=0xA))
            return seen

        quiet_result, lively_pings = await asyncio.gather(
            asyncio.to_thread(frames_until_closed, quiet, 4.0),
            asyncio.to_thread(answer_pings, 3.0),
        )
        opcodes, closed = quiet_result
        assert 0x9 in opcodes  # pinged
        assert closed  # and closed for not answering, well before 4 s
        assert lively_pings  # pinged too, and answered
        lively.sendall(ws_frame(b'{"jsonrpc":"2.0","id":1,"method":"NoOp","params":{}}'))
        lively.settimeout(5)
        reply = await asyncio.to_thread(lively.recv, 4096)
        assert b'"id":1' in reply  # still open and served
    finally:
        quiet.close()
        lively.close()
