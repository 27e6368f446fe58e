"""CoreConnected: the gateway's own view of the Core, read from GET /corez on Ready gateway pods.

Only pod IPs taken from the pods' status are dialled (never a name, never a
Service), only when the gateway_probe setting allows it, and only inside
gateway_probe_cidrs when that is set.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import Any

import aiohttp

from .k8s import Kube
from .render.common import METRICS_PORT
from .settings import OperatorSettings
from .status import Cond

MAX_PODS = 3
TIMEOUT_S = 2.0


@dataclass(frozen=True)
class CoreView:
    condition: Cond
    engine: dict[str, Any] | None = None
    """EngineStatus (State, DesignName, Platform) when a gateway is connected."""


def _allowed(ip: str, cidrs: tuple[str, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return not cidrs or any(addr in ipaddress.ip_network(c, strict=False) for c in cidrs)


def _ready_ips(pods: list[Any]) -> list[str]:
    ips = []
    for pod in pods:
        status = pod.status
        if pod.metadata.deletion_timestamp or not status or not status.pod_ip:
            continue
        conditions = status.conditions or []
        if any(c.type == "Ready" and c.status == "True" for c in conditions):
            ips.append(status.pod_ip)
    return sorted(ips)


async def _corez(session: aiohttp.ClientSession, ip: str) -> dict[str, Any] | None:
    host = f"[{ip}]" if ":" in ip else ip
    try:
        async with session.get(
            f"http://{host}:{METRICS_PORT}/corez", timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)
        ) as resp:
            if resp.status != 200:
                return None
            body: dict[str, Any] = await resp.json()
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def probe_core(
    kube: Kube,
    settings: OperatorSettings,
    session: aiohttp.ClientSession,
    namespace: str,
    selector: str,
    target: str,
) -> CoreView:
    if not settings.gateway_probe:
        return CoreView(Cond("CoreConnected", "Unknown", "ProbeDisabled", "gateway probe is off"))
    ips = _ready_ips(await kube.list_pods(namespace, selector))
    if not ips:
        return CoreView(
            Cond("CoreConnected", "Unknown", "NoReadyGateway", "no Ready gateway pod to ask")
        )
    allowed = [ip for ip in ips if _allowed(ip, settings.gateway_probe_cidrs)][:MAX_PODS]
    if not allowed:
        return CoreView(
            Cond(
                "CoreConnected",
                "Unknown",
                "ProbeNotAllowed",
                "no gateway pod IP is inside gateway_probe_cidrs",
            )
        )
    answers = await asyncio.gather(*(_corez(session, ip) for ip in allowed))
    seen = [a for a in answers if isinstance(a, dict)]
    if not seen:
        return CoreView(
            Cond(
                "CoreConnected",
                "Unknown",
                "GatewayUnreachable",
                f"no answer from the gateway pods on port {METRICS_PORT} (GET /corez)",
            )
        )
    for answer in seen:
        engine = answer.get("engineStatus")
        if answer.get("upstreamUp") is True and isinstance(engine, dict):
            state = engine.get("State")
            return CoreView(
                Cond("CoreConnected", "True", "Connected", f"Core {target} is {state}"), engine
            )
    return CoreView(
        Cond(
            "CoreConnected",
            "False",
            "CoreUnreachable",
            f"the gateway pods cannot reach the Core at {target}; check core.host, core.port, "
            "the credentials and the Core itself",
        )
    )
