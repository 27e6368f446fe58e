"""The gateway as an MCP server on `/v1/mcp` (docs/mcp.md).

The MCP SDK costs seconds of import time and ~30 MiB, so it is imported only when
`mcp.enabled` is (at start-up, or by the first request after a reload enables it).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import ErrorCode, QrcError

from ..transports.common import Services

if TYPE_CHECKING:
    from .endpoint import McpEndpoint

PATH = "/v1/mcp"


class Mcp:
    """Mounts `/v1/mcp` and starts the endpoint once MCP is enabled."""

    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._endpoint: McpEndpoint | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        if self._svc.runtime.config.mcp.enabled:
            await self._ensure()

    async def _ensure(self) -> McpEndpoint:
        async with self._lock:
            if self._endpoint is None:
                from .endpoint import McpEndpoint

                endpoint = McpEndpoint(self._svc)
                await endpoint.start()
                self._endpoint = endpoint
            return self._endpoint

    def mount(self, app: web.Application) -> None:
        app.router.add_route("*", PATH, self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self._svc.runtime.config.mcp.enabled:
            err = QrcError(ErrorCode.METHOD_NOT_FOUND, "MCP is not enabled")
            return web.Response(
                body=orjson.dumps(jsonrpc.error_message(None, err)),
                status=404,
                content_type="application/json",
            )
        endpoint = self._endpoint or await self._ensure()
        return await endpoint.handle(request)

    async def stop(self) -> None:
        if self._endpoint is not None:
            await self._endpoint.stop()
