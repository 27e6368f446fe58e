"""NUL-terminated framing of the QRC byte stream.

`FrameDecoder` is sans-IO: feed it whatever a socket read returned and it hands
back complete frames. A frame that grows past `max_frame_bytes` is reported once
as `FRAME_TOO_LARGE` and then discarded up to its terminating NUL, so an endless
stream without NUL costs no memory.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

NUL: Final = b"\x00"


class _FrameTooLarge:
    __slots__ = ()

    def __repr__(self) -> str:
        return "FRAME_TOO_LARGE"


FRAME_TOO_LARGE: Final = _FrameTooLarge()
Frame = bytes | _FrameTooLarge


class FrameDecoder:
    __slots__ = ("_buffer", "_discarding", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = 262144) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._discarding = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Return the frames completed by `data`, in order. Empty frames are skipped."""
        frames: list[Frame] = []
        start = 0
        end = len(data)
        while start < end:
            nul = data.find(NUL, start)
            if nul < 0:
                self._append(data, start, end, frames)
                break
            if not self._buffer and not self._discarding and nul - start <= self.max_frame_bytes:
                frame = data[start:nul]
                if frame.strip():
                    frames.append(frame)
            elif not self._discarding:
                self._append(data, start, nul, frames)
                if not self._discarding and self._buffer.strip():
                    frames.append(bytes(self._buffer))
                self._buffer.clear()
            self._discarding = False
            start = nul + 1
        return frames

    def _append(self, data: bytes, start: int, stop: int, frames: list[Frame]) -> None:
        if self._discarding:
            return
        if len(self._buffer) + (stop - start) > self.max_frame_bytes:
            self._buffer.clear()
            self._discarding = True
            frames.append(FRAME_TOO_LARGE)
            return
        self._buffer += data[start:stop]


def encode_frame(message: Any) -> bytes:
    """Serialise one JSON-RPC message and terminate it with NUL."""
    return orjson.dumps(message) + NUL
