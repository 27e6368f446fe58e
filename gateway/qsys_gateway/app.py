"""Wiring: builds the runtime from a config file and runs every listener until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import ssl
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qsys_protocol.config import GatewayConfig, TlsConfig

from . import tracing
from .admission import Admission
from .audit import AuditLog
from .client_registry import ClientRegistry
from .connlimit import HttpConnections, LimitedTCPSite
from .mcp import Mcp
from .metrics import GatewayMetrics
from .ratelimit import RateLimiter
from .reload import ConfigWatcher
from .runtime import Runtime
from .transports.common import Services
from .transports.fastrpc import FastRpc, Guard
from .transports.http import build_app
from .transports.qrc_tcp import QrcServer
from .upstream import UpstreamPool

log = logging.getLogger("qsys_gateway")

SHUTDOWN_GRACE = 20.0


def tls_context(tls: TlsConfig | None) -> ssl.SSLContext | None:
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.certFile, tls.keyFile)
    return ctx


class Gateway:
    def __init__(self, config: GatewayConfig, config_path: str | Path | None = None) -> None:
        self.metrics = GatewayMetrics()
        self.clients = ClientRegistry(self.metrics)
        self.upstream = UpstreamPool(
            config.core, metrics=self.metrics, on_engine_status=self._engine_status
        )
        self.runtime = Runtime(
            config,
            metrics=self.metrics,
            limiter=RateLimiter.create(config.limits.storage, metrics=self.metrics),
            upstream=self.upstream,
            audit=AuditLog(config.audit.path, self.metrics),
        )
        self.admission = Admission(self.runtime)
        self.services = Services(self.runtime, self.admission, self.clients)
        rt = self.runtime
        self.http_connections = HttpConnections(
            self.metrics,
            lambda: rt.config.limits,
            fd_budget=_fd_budget(),
            other_fds=lambda: self.clients.count("qrc"),
        )
        self.mcp = Mcp(self.services)
        self.watcher = (
            ConfigWatcher(config_path, self.runtime.apply, self.metrics) if config_path else None
        )
        self._runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._qrc: QrcServer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _engine_status(self, status: dict[str, object]) -> None:
        self.clients.broadcast({"jsonrpc": "2.0", "method": "EngineStatus", "params": status})

    async def start(self) -> None:
        cfg = self.runtime.config
        listen = cfg.listen
        tls = tls_context(listen.tls)
        await self.upstream.start()
        self.admission.start()
        metrics_app = web.Application()
        metrics_app.router.add_get("/metrics", self._serve_metrics)
        metrics_app.router.add_get("/corez", self._serve_corez)
        self._metrics_runner = web.AppRunner(metrics_app, access_log=None, handle_signals=False)
        await self._metrics_runner.setup()
        await web.TCPSite(
            self._metrics_runner, listen.host, listen.metrics, reuse_address=True
        ).start()
        if listen.qrc is not None:
            self._qrc = QrcServer(self.services, listen.host, listen.qrc, tls)
            self.upstream.add_up_listener(self._qrc.core_changed)
            await self._qrc.start()
        await self.mcp.start()
        # HTTP last: once /readyz answers, every listener is up.
        http_app = build_app(self.services, self.http_connections)
        self.mcp.mount(http_app)
        self._runner = web.AppRunner(http_app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await LimitedTCPSite(
            self._runner,
            self.http_connections,
            self._fast_rpc,
            host=listen.host,
            port=listen.http,
            ssl_context=tls,
            reuse_address=True,
        ).start()
        if self.watcher is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self.watcher.run()))
        log.info(
            "gateway listening",
            extra={"http": listen.http, "qrc": listen.qrc, "metrics": listen.metrics},
        )

    def _fast_rpc(self, guard: Guard) -> FastRpc | None:
        """`/v1/rpc` without aiohttp, unless tracing wants aiohttp's server spans."""
        if tracing.ENABLED:
            return None
        return FastRpc(self.services, self.http_connections, guard)

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        # Probed per scrape: without traffic no call would notice Redis going away.
        storage_up = await self.runtime.limiter.healthy()
        self.metrics.ratelimit_storage_up.set(1 if storage_up else 0)
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _serve_corez(self, request: web.Request) -> web.Response:
        """The gateway's view of the Core for the operator (no token: same exposure as metrics)."""
        status = self.upstream.engine_status
        engine = (
            {k: status.get(k) for k in ("State", "DesignName", "Platform")}
            if status is not None
            else None
        )
        return web.json_response({"upstreamUp": self.upstream.up, "engineStatus": engine})

    async def shutdown(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Readiness false, stop accepting, finish in-flight calls, close clients, exit."""
        rt = self.runtime
        rt.shutting_down = True
        log.info("shutting down")
        if self._qrc is not None:
            self._qrc.stop_accepting()
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await rt.idle.wait()
        await self.clients.close_all()
        if self._qrc is not None:
            await self._qrc.close_all(max(0.5, deadline - loop.time()))
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.mcp.stop()
        self.http_connections.close_idle()  # aiohttp's cleanup knows only its own
        if self._runner is not None:
            await self._runner.cleanup()
        await self.admission.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        await self.upstream.stop()
        await rt.limiter.close()
        rt.close()
        rt.audit.close()
        tracing.shutdown()
        log.info("stopped")


FD_RESERVE = 64
"""Descriptors kept for the Core connections, Redis, config files, metrics and logs."""


def _fd_budget() -> int:
    """Descriptors left for client sockets (HTTP, WebSocket and raw QRC together): the
    soft limit, raised to the hard one first, less `FD_RESERVE`. A WebSocket client is
    one HTTP connection and one of `maxClients`, so it is counted once, as a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(16, soft - FD_RESERVE)


GC_GEN0_THRESHOLD = 20_000
"""Allocations between young collections (Python's default is 700). A call leaves
little cyclic garbage, so at thousands of calls a second the default collects after
every few calls for nothing."""


def tune_gc() -> None:
    """After start-up: the modules, config and listeners built so far are moved out of
    the collector's sight (`gc.freeze`), so no collection walks them again, and young
    collections run less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def run(config: GatewayConfig, config_path: str | Path | None) -> None:
    gateway = Gateway(config, config_path)
    await gateway.start()
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gateway.shutdown()
