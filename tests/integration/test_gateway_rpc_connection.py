"""`/v1/rpc` on one keep-alive connection, byte by byte: the gateway's own HTTP path
(`FastRpc`) and the hand-over to aiohttp for anything else, on raw sockets."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import time
from typing import Any

import orjson
import pytest
from gateway_harness import ADMIN_TOKEN, GatewayFactory

from qsys_testkit import GatewayProcess

TOKEN = ADMIN_TOKEN.encode()


def rpc_request(rid: int, *, extra: bytes = b"", body: bytes | None = None) -> bytes:
    if body is None:
        body = orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": "NoOp", "params": {}})
    return (
        b"POST /v1/rpc HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + TOKEN + b"\r\n"
        b"Content-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
    is_json = headers.get("content-type") == "application/json"
    return status, headers, orjson.loads(body) if body and is_json else body


async def test_rpc_then_other_paths_then_rpc_on_one_connection(
    shared_gateway: GatewayProcess,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", shared_gateway.http_port)
    try:
        writer.write(rpc_request(1))
        status, headers, body = await read_response(reader)
        assert (status, body["id"], body["result"]) == (200, 1, True)
        assert headers["x-content-type-options"] == "nosniff"
        # another path: aiohttp answers it, and keeps the connection from then on
        writer.write(b"GET /livez HTTP/1.1\r\nHost: gw\r\n\r\n")
        status, _, body = await read_response(reader)
        assert (status, body["status"]) == (200, "ok")
        writer.write(rpc_request(2))
        status, _, body = await read_response(reader)
        assert (status, body["id"]) == (200, 2)
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order(shared_gateway: GatewayProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", shared_gateway.http_port)
    try:
        writer.write(b"".join(rpc_request(i) for i in range(1, 6)))
        ids = [(await read_response(reader))[2]["id"] for _ in range(5)]
        assert ids == [1, 2, 3, 4, 5]
    finally:
        writer.close()


async def test_a_body_split_over_segments_and_a_chunked_body(
    shared_gateway: GatewayProcess,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", shared_gateway.http_port)
    try:
        data = rpc_request(7)
        for i in range(0, len(data), 9):
            writer.write(data[i : i + 9])
            await writer.drain()
            await asyncio.sleep(0.005)
        status, _, body = await read_response(reader)
        assert (status, body["id"]) == (200, 7)
        payload = orjson.dumps({"jsonrpc": "2.0", "id": 8, "method": "NoOp", "params": {}})
        writer.write(
            b"POST /v1/rpc HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + TOKEN + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(payload)
            + payload
            + b"\r\n0\r\n\r\n"
        )
        status, _, body = await read_response(reader)
        assert (status, body["id"]) == (200, 8)
    finally:
        writer.close()


async def test_connection_close_and_errors(shared_gateway: GatewayProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", shared_gateway.http_port)
    try:
        writer.write(rpc_request(3, body=b"{not json"))
        status, headers, body = await read_response(reader)
        assert (status, body["error"]["code"]) == (400, -32700)
        # a malformed header line goes to aiohttp, whose parser refuses it
        writer.write(b"POST /v1/rpc HTTP/1.1\r\nHost : gw\r\nContent-Length: 2\r\n\r\n{}")
        status, _, _ = await read_response(reader)
        assert status == 400
    finally:
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", shared_gateway.http_port)
    try:
        writer.write(rpc_request(4, extra=b"Connection: close\r\n"))
        status, headers, body = await read_response(reader)
        assert (status, body["id"], headers["connection"]) == (200, 4, "close")
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_a_body_that_never_ends_is_408_and_closed(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port, lambda c: c["limits"].update(bodyTimeoutSeconds=1))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.http_port)
    try:
        data = rpc_request(5)
        writer.write(data[:-3])
        started = time.monotonic()
        status, _, body = await read_response(reader)
        assert (status, body["error"]["code"]) == (408, -32600)
        assert time.monotonic() - started < 5
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


def _head(extra: bytes = b"", length: bytes | None = None, line: bytes = b"") -> bytes:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 9, "method": "NoOp", "params": {}})
    data = rpc_request(9, extra=extra)
    if length is not None:
        data = data.replace(b"Content-Length: %d" % len(body), length)
    if line:
        data = data.replace(b"POST /v1/rpc HTTP/1.1", line)
    return data


REFUSED_HEADS = {
    # what aiohttp's parser refuses: the gateway's own path must not serve it either
    "content-length-and-chunked": _head(b"Transfer-Encoding: chunked\r\n"),
    "content-length-and-identity": _head(b"Transfer-Encoding: identity\r\n"),
    "two-content-lengths": _head(b"Content-Length: 5\r\n"),
    "content-length-plus": _head(length=b"Content-Length: +52"),
    "content-length-list": _head(length=b"Content-Length: 52,52"),
    "content-length-hex": _head(length=b"Content-Length: 0x34"),
    "content-length-overflow": _head(length=b"Content-Length: 99999999999999999999999"),
    "obs-fold": _head(b"X-A: a\r\n b\r\n"),
    "lowercase-method": _head(line=b"post /v1/rpc HTTP/1.1"),
    "bare-lf": _head(b"X-A: a\nX-B: b\r\n"),
    "two-hosts": _head(b"Host: other\r\n"),
    **{
        f"control-{ch:#04x}-in-a-value": _head(b"X-A: a%cb\r\n" % ch)
        for ch in (0x00, 0x01, 0x08, 0x0B, 0x0C, 0x1B, 0x1F, 0x7F)
    },
}


@pytest.mark.parametrize("data", REFUSED_HEADS.values(), ids=REFUSED_HEADS.keys())
async def test_what_aiohttp_refuses_is_a_400_and_a_close(
    shared_gateway: GatewayProcess, data: bytes
) -> None:
    """Ambiguous or malformed heads (request smuggling, control characters aiohttp's
    parser refuses in a header value) get aiohttp's 400 and the connection closes: the
    gateway's own path never answers them, nor anything behind them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", shared_gateway.http_port)
    try:
        writer.write(data + rpc_request(10))
        status, _, _ = await read_response(reader)
        assert status == 400
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


SERVED_HEADS = {
    "tab-and-obs-text-in-a-value": _head("X-A: a\tb é\r\n".encode()),
    "expect-100-continue": _head(b"Expect: 100-continue\r\n"),
    "query-string": _head(line=b"POST /v1/rpc?x=1 HTTP/1.1"),
    "absolute-form": _head(line=b"POST http://gw/v1/rpc HTTP/1.1"),
    "http-1.0-keep-alive": _head(b"Connection: keep-alive\r\n", line=b"POST /v1/rpc HTTP/1.0"),
    "content-length-leading-zeros": _head(length=b"Content-Length: 00052"),
}


@pytest.mark.parametrize("data", SERVED_HEADS.values(), ids=SERVED_HEADS.keys())
async def test_unusual_but_valid_heads_are_answered_and_keep_the_connection(
    shared_gateway: GatewayProcess, data: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", shared_gateway.http_port)
    try:
        writer.write(data + rpc_request(10))
        answers = [await read_response(reader) for _ in range(2)]
        if answers[0][0] == 100:  # Expect: the interim response, then the answer
            answers = [answers[1], await read_response(reader)]
        assert [(s, b["id"]) for s, _, b in answers] == [(200, 9), (200, 10)]
        assert answers[0][1]["x-request-id"] != answers[1][1]["x-request-id"]
    finally:
        writer.close()


async def test_a_request_after_a_413_is_not_run(shared_gateway: GatewayProcess) -> None:
    """The unread body of a 413 could hold anything: the connection closes after it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", shared_gateway.http_port)
    try:
        writer.write(rpc_request(11, body=b"[" + b" " * 70000 + b"]") + rpc_request(12))
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (413, "close")
        # the unread bytes may make the kernel reset rather than end the socket
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("token", "status"), [(ADMIN_TOKEN, 413), ("not-a-token", 401)], ids=["413", "401"]
)
def test_a_client_still_sending_a_refused_body_reads_the_answer(
    shared_gateway: GatewayProcess, token: str, status: int
) -> None:
    """`http.client` (under `requests`) writes the whole body before it reads: the
    gateway reads and drops a body it refused, so the client gets the 413 or 401, not
    a broken pipe from a reset (aiohttp's lingering close does the same)."""
    body = b'{"jsonrpc":"2.0","id":1,"method":"NoOp","x":"' + b"x" * (8 << 20) + b'"}'
    conn = http.client.HTTPConnection("127.0.0.1", shared_gateway.http_port, timeout=20)
    try:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn.request("POST", "/v1/rpc", body=body, headers=headers)
        response = conn.getresponse()
        assert (response.status, response.getheader("Connection")) == (status, "close")
        assert orjson.loads(response.read())["error"]["code"] in (-32600, -32001)
    finally:
        conn.close()
