"""Which request heads the gateway's own `/v1/rpc` path serves; everything else is
aiohttp's (None)."""

from __future__ import annotations

import pytest

from qsys_gateway.transports.fastrpc import Head, _may_be_rpc, parse_head

BASE = b"POST /v1/rpc HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer t\r\nContent-Length: 12"


def test_a_plain_rpc_head() -> None:
    assert parse_head(BASE) == Head(12, "Bearer t", None, None, False)
    head = parse_head(
        BASE + b"\r\nOrigin: https://a\r\nX-Request-ID: r-1\r\nConnection: keep-alive, Close"
    )
    assert head == Head(12, "Bearer t", "https://a", "r-1", True)
    assert parse_head(BASE + "\r\nX: a\tb é".encode()) is not None  # HTAB and obs-text pass


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v1/rpc HTTP/1.1\r\nHost: gw\r\nContent-Length: 0",
        b"POST /v1/rpc HTTP/1.0\r\nHost: gw\r\nContent-Length: 0",
        b"POST /v1/rpc?x=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 0",
        b"POST /v1/status HTTP/1.1\r\nHost: gw\r\nContent-Length: 0",
        b"POST /v1/rpc HTTP/1.1\r\nHost: gw",  # no Content-Length
        b"POST /v1/rpc HTTP/1.1\r\nContent-Length: 0",  # no Host (aiohttp: 400)
        BASE + b"\r\nContent-Length: 12",  # repeated
        BASE.replace(b"12", b"+12"),
        BASE.replace(b"12", b"1 2"),
        BASE + b"\r\nTransfer-Encoding: chunked",
        BASE + b"\r\nExpect: 100-continue",
        BASE + b"\r\nUpgrade: websocket",
        BASE + b"\r\nAuthorization: Bearer u",
        BASE + b"\r\nHost : gw",  # space before the colon
        BASE + b"\r\n folded",  # obs-fold
        BASE + b"\r\nX: a\rb",
        BASE + b"\r\nX: a\nb",
        BASE + b"\r\nNo-colon",
        BASE + b"\r\nX: a\x01b",  # control characters aiohttp refuses in a value
        BASE + b"\r\nX: \x1b[0m",
        BASE + b"\r\nX: a\x7f",
        BASE + b"\r\nX: a\x00",
        BASE + b"".join(b"\r\nX-%d: 1" % i for i in range(100)),
    ],
)
def test_anything_unusual_goes_to_aiohttp(head: bytes) -> None:
    assert parse_head(head) is None


@pytest.mark.parametrize(
    ("start", "may"),
    [
        (b"", True),
        (b"PO", True),
        (b"POST /v1/rpc HTTP/1.1\r\nHost: g", True),
        (b"GET / HTTP/1.1\r\n", False),
        (b"\x16\x03\x01\x00\xa5", False),  # a TLS hello on the plain port
        (b"POST /v1/rpc HTTP/1.1\nHost: gw\n", False),  # bare LF
    ],
)
def test_an_incomplete_head_that_cannot_be_rpc_goes_at_once(start: bytes, may: bool) -> None:
    assert _may_be_rpc(start) is may
