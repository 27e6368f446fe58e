"""Helpers for the MCP tests: the official SDK client against a gateway, and raw HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from mcp.client import Client
from mcp.client.session import ClientSession, MessageHandlerFnT
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from qsys_testkit import GatewayProcess

ACCEPT = "application/json, text/event-stream"
PROTOCOL = "2025-11-25"


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": PROTOCOL,
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "1"},
    },
}


def enable_mcp(config: dict[str, Any], **extra: Any) -> None:
    config["mcp"] = {"enabled": True, **extra}


@contextlib.asynccontextmanager
async def mcp_session(
    gw: GatewayProcess, token: str, message_handler: MessageHandlerFnT | None = None
) -> AsyncIterator[ClientSession]:
    """An initialised MCP session of the official Python SDK (Streamable HTTP)."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with (
        http,
        streamable_http_client(f"{gw.url}/v1/mcp", http_client=http) as (read, write),
        ClientSession(read, write, message_handler=message_handler) as session,
    ):
        await session.initialize()
        yield session


def sse_messages(text: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a Server-Sent Events body (or a plain JSON body)."""
    text = text.strip()
    if text.startswith("{") or text.startswith("["):
        parsed = json.loads(text)
        return parsed if isinstance(parsed, list) else [parsed]
    out = []
    for block in text.split("\n\n"):
        data = "\n".join(
            line[5:].lstrip() for line in block.splitlines() if line.startswith("data:")
        )
        if data:
            out.append(json.loads(data))
    return out


async def raw_post(
    http: aiohttp.ClientSession,
    gw: GatewayProcess,
    body: bytes | dict[str, Any],
    token: str | None,
    session_id: str | None = None,
) -> tuple[int, dict[str, str], str]:
    headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if session_id is not None:
        headers["Mcp-Session-Id"] = session_id
        headers["MCP-Protocol-Version"] = PROTOCOL
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(f"{gw.url}/v1/mcp", data=data, headers=headers) as r:
        return r.status, dict(r.headers), await r.text()


async def raw_initialize(http: aiohttp.ClientSession, gw: GatewayProcess, token: str) -> str:
    """Open a session with raw HTTP; returns its Mcp-Session-Id."""
    status, headers, _ = await raw_post(http, gw, INITIALIZE, token)
    assert status == 200, status
    sid = headers["mcp-session-id"]
    status, _, _ = await raw_post(
        http, gw, {"jsonrpc": "2.0", "method": "notifications/initialized"}, token, sid
    )
    assert status == 202, status
    return sid


@contextlib.asynccontextmanager
async def mcp_client(gw: GatewayProcess, token: str) -> AsyncIterator[Client]:
    """The SDK's high-level `Client`, negotiating the newest protocol (2026-07-28)."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with (
        http,
        Client(streamable_http_client(f"{gw.url}/v1/mcp", http_client=http)) as client,
    ):
        yield client


async def wait_healthy(gw: GatewayProcess) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            async with http.get(f"{gw.url}/healthz") as r:
                if (await r.json())["status"] == "healthy":
                    return
            await asyncio.sleep(0.1)
    raise AssertionError("the gateway's upstream did not come up")
