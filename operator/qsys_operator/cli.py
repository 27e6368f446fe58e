"""`qsys-operator`: runs the Kopf operator for QSysCore and AccessPolicy."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import random
import socket
import sys
import uuid
from typing import Any

import kopf

from .handlers import build_registry
from .handlers.children import MANAGED_BY_SELECTOR
from .health import register as register_health
from .k8s import Kube, load_api_client
from .kinds import CHILDREN
from .logs import setup_logging
from .metrics import OperatorMetrics
from .peering import Peering
from .reconcile import Reconciler
from .settings import OperatorSettings

log = logging.getLogger("qsys_operator")

DEFAULT_PEERING = "qsys-operator"


def _address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "0.0.0.0", int(port)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="qsys-operator", description=__doc__)
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="namespace to watch (repeatable); default: QSYS_WATCH_NAMESPACES, else all",
    )
    p.add_argument("--metrics-address", type=_address, default=("0.0.0.0", 8000))
    p.add_argument("--health-address", type=_address, default=("0.0.0.0", 8081))
    p.add_argument("--peering", default=DEFAULT_PEERING, help="Kopf peering object name")
    p.add_argument("--standalone", action="store_true", help="no peering (single replica)")
    p.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; default: random, so that exactly one replica is active",
    )
    p.add_argument("--log-level", default=os.environ.get("QSYS_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def configure_kopf(
    settings: kopf.OperatorSettings, opts: argparse.Namespace, priority: int
) -> None:
    settings.posting.level = logging.WARNING
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="qsys.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="qsys.dev", key="last-handled-configuration"
    )
    # An object's Kopf worker keeps its latest event's body until it exits: after 1 s
    # idle instead of 5, so a burst of thousands of children's events is not all held.
    settings.queueing.idle_timeout = 1.0
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.peering.name = opts.peering
    settings.peering.priority = priority
    settings.peering.standalone = opts.standalone
    settings.peering.lifetime = 20
    for kind in CHILDREN:
        settings.watching.label_selectors[kind.resource] = MANAGED_BY_SELECTOR


async def _resync_loop(reconciler: Reconciler, period: float) -> None:
    while True:
        await asyncio.sleep(period)
        try:
            await reconciler.resync()
        except Exception as exc:
            log.warning("resync failed", extra={"error": f"{type(exc).__name__}: {exc}"})


async def run(opts: argparse.Namespace, settings: OperatorSettings) -> None:
    namespaces = list(opts.namespace) or list(settings.watch_namespaces)
    if namespaces:
        settings = settings.model_copy(update={"watch_namespaces": tuple(namespaces)})
    metrics = OperatorMetrics()
    kube = Kube(load_api_client(), on_call=metrics.count_api_call)
    metrics.serve(*opts.metrics_address)
    priority = opts.priority if opts.priority is not None else random.randint(1, 1_000_000)
    identity = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"
    peering = Peering(
        kube,
        name=opts.peering,
        identity=identity,
        priority=priority,
        namespaces=namespaces,
        standalone=opts.standalone,
    )
    if not opts.standalone:
        try:
            await peering.ensure()
        except Exception as exc:
            log.warning(
                "peering unavailable (are the kopf.dev CRDs installed?); running standalone",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )
            opts.standalone = peering.standalone = True
    reconciler = Reconciler(kube, settings, metrics, peering)
    registry = build_registry(reconciler)
    register_health(registry, reconciler)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
        return info or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings, opts, priority)

    health_host, health_port = opts.health_address
    log.info(
        "starting",
        extra={
            "namespaces": namespaces or "all",
            "peering": None if opts.standalone else opts.peering,
            "priority": priority,
            "identity": identity,
        },
    )
    # Kopf's Identity is a NewType of str that Kopf does not export.
    peer_identity: dict[str, Any] = {"identity": identity}
    resync = asyncio.create_task(_resync_loop(reconciler, settings.resync_seconds))
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=opts.standalone,
            **peer_identity,
            liveness_endpoint=f"http://{health_host}:{health_port}/healthz",
        )
    finally:
        resync.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await resync
        await reconciler.close()


M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before any worker thread starts, and fix the size from
    which an allocation gets its own mapping.

    Every Kubernetes API call runs in a worker thread, and glibc gives each thread
    its own arena that keeps freed memory; with the default (8 per core) the
    operator's RSS grows by tens of MiB at scale for no gain. glibc also raises the
    mapping threshold to the largest block freed so far (up to 32 MiB), after which
    large response bodies come from the arenas and leave them fragmented; fixed at
    256 KiB they are returned to the system when freed. No-op off glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_ARENA_MAX, arenas)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def main(argv: list[str] | None = None) -> int:
    limit_malloc_arenas()
    opts = parse_args(argv)
    setup_logging(opts.log_level)
    try:
        settings = OperatorSettings.from_env()
    except ValueError as exc:
        print(f"qsys-operator: invalid settings: {exc}", file=sys.stderr)
        return 2
    asyncio.run(run(opts, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
