"""`/v1/rpc` on one keep-alive connection, byte by byte: the gateway's own HTTP path
(`FastRpc`) and the hand-over to aiohttp for anything else, on raw sockets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
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
