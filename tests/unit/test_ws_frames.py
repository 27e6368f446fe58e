"""The WebSocket transport writes its text frames itself (several per write): byte for byte
what aiohttp's own writer sends, at each length encoding."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiohttp import WSMsgType
from aiohttp._websocket.writer import WebSocketWriter

from qsys_gateway.transports.wsframes import text_frame_header


class _Capture:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
async def test_frame_is_what_aiohttp_sends(size: int) -> None:
    payload = b"x" * size
    sink = _Capture()
    writer = WebSocketWriter(cast(Any, None), cast(asyncio.Transport, sink), limit=1 << 30)
    await writer.send_frame(payload, WSMsgType.TEXT)
    assert text_frame_header(size) + payload == bytes(sink.data)
