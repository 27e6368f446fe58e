"""The `X-gateway` NetworkPolicy: clients in, metrics from monitoring, out only to Core and DNS.

The operator's namespace may reach the metrics port too: the operator reads the
gateway's view of the Core there (GET /corez). The sourceCIDRs of source-bound
subjects (legacy QRC clients without Logon) may reach the QRC port, and only it. A
gateway that reviews ServiceAccount tokens may also reach the API server's endpoints.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Any

from ..api import QSysCore
from ..kinds import NETWORK_POLICY
from ..settings import OperatorSettings
from .common import (
    HTTP_PORT,
    METRICS_PORT,
    QRC_PORT,
    Manifest,
    child_metadata,
    gateway_name,
    selector_labels,
)

NAMESPACE_LABEL = "kubernetes.io/metadata.name"
OTLP_URI = re.compile(r"^(https?)://(\[[^\]]+\]|[^:/\s]+)(?::(\d+))?")
REDIS_URI = re.compile(r"^rediss?://(?:[^@/\s]*@)?(\[[^\]]+\]|[^:/\s]+)(?::(\d+))?")
SENTINEL_URI = re.compile(r"^redis\+sentinel://(?:[^@/\s]*@)?([^/\s]+)/")
SENTINEL_HOST = re.compile(r"^(\[[^\]]+\]|[^:]+)(?::(\d+))?$")


def _host_cidr(host: str) -> str | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return f"{ip}/{ip.max_prefixlen}"


def _tcp(port: int) -> dict[str, Any]:
    return {"protocol": "TCP", "port": port}


def core_cidrs(core: QSysCore) -> list[str]:
    """ipBlocks for the Core(s): /32 (or /128) per IP host, plus coreCIDRs."""
    hosts = [core.spec.core.host, core.spec.core.redundantHost]
    cidrs = {c for c in (_host_cidr(h) for h in hosts if h) if c}
    cidrs.update(core.spec.networkPolicy.coreCIDRs)
    return sorted(cidrs)


def _redis_egress(storage: str) -> list[dict[str, Any]]:
    """Redis rate-limit storage must stay reachable: its IP, or any in-cluster pod, on its
    port. Behind Sentinel: each sentinel so, and the primary they name on 6379 at the
    sentinels' addresses (where Sentinel runs beside Redis); a primary elsewhere needs a
    NetworkPolicy of its own (docs/policy.md)."""
    match = REDIS_URI.match(storage)
    if match:
        host, port = match.group(1), int(match.group(2) or 6379)
        return [{"to": [_peer(host)], "ports": [_tcp(port)]}]
    match = SENTINEL_URI.match(storage)
    if not match:
        return []
    rules: list[dict[str, Any]] = []
    peers: list[dict[str, Any]] = []
    for item in match.group(1).split(","):
        found = SENTINEL_HOST.match(item)
        if not found:
            continue
        peer = _peer(found.group(1))
        rules.append({"to": [peer], "ports": [_tcp(int(found.group(2) or 26379))]})
        if peer not in peers:
            peers.append(peer)
    return [*rules, {"to": peers, "ports": [_tcp(6379)]}]


def _peer(host: str) -> dict[str, Any]:
    cidr = _host_cidr(host)
    return {"ipBlock": {"cidr": cidr}} if cidr else {"namespaceSelector": {}}


def _otlp_egress(endpoint: str) -> dict[str, Any] | None:
    """The OTLP trace endpoint: its IP, or any in-cluster pod, on its port."""
    match = OTLP_URI.match(endpoint)
    if not match:
        return None
    scheme, host, port = match.group(1), match.group(2), match.group(3)
    cidr = _host_cidr(host)
    peer = {"ipBlock": {"cidr": cidr}} if cidr else {"namespaceSelector": {}}
    return {"to": [peer], "ports": [_tcp(int(port or (443 if scheme == "https" else 80)))]}


def source_bound_ingress(source_cidrs: list[str]) -> list[dict[str, Any]]:
    """Exactly the source-bound subjects' networks, on the raw QRC port only."""
    if not source_cidrs:
        return []
    peers = [{"ipBlock": {"cidr": cidr}} for cidr in sorted(set(source_cidrs))]
    return [{"from": peers, "ports": [_tcp(QRC_PORT)]}]


def api_server_egress(endpoints: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
    """The API server's endpoints (address /32 or /128, and port), for TokenReviews.

    Pods dial the `kubernetes` Service; the policy sees the endpoint it is translated to."""
    if not endpoints:
        return []
    cidrs = sorted({c for c in (_host_cidr(a) for a, _ in endpoints) if c})
    ports = sorted({p for _, p in endpoints})
    return [{"to": [{"ipBlock": {"cidr": c}} for c in cidrs], "ports": [_tcp(p) for p in ports]}]


def render_network_policy(
    core: QSysCore,
    settings: OperatorSettings,
    source_cidrs: list[str] | None = None,
    api_server: Sequence[tuple[str, int]] = (),
) -> Manifest | None:
    """api_server: the API server's endpoints, given only when the gateway reviews
    ServiceAccount tokens (no egress to the API server otherwise)."""
    np = core.spec.networkPolicy
    if not np.enabled:
        return None
    clients = np.allowedClients if np.allowedClients is not None else [{"podSelector": {}}]
    egress: list[dict[str, Any]] = [
        {
            "to": [{"ipBlock": {"cidr": cidr}} for cidr in core_cidrs(core)],
            "ports": [_tcp(core.spec.core.port)],
        },
        {
            "to": [
                {
                    "namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: settings.dns_namespace}},
                    "podSelector": {"matchLabels": dict(sorted(settings.dns_pod_labels.items()))},
                }
            ],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
    ]
    egress.extend(_redis_egress(core.spec.limits.storage))
    tracing = core.spec.gateway.tracing
    otlp = _otlp_egress(tracing.otlpEndpoint) if tracing else None
    if otlp:
        egress.append(otlp)
    egress.extend(api_server_egress(api_server))
    return {
        "apiVersion": NETWORK_POLICY.api_version,
        "kind": NETWORK_POLICY.kind,
        "metadata": child_metadata(core, gateway_name(core.metadata.name)),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(core.metadata.name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": list(clients), "ports": [_tcp(HTTP_PORT), _tcp(QRC_PORT)]},
                *source_bound_ingress(source_cidrs or []),
                {
                    "from": [
                        {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: ns}}}
                        for ns in sorted(
                            {settings.monitoring_namespace, settings.operator_namespace}
                        )
                    ],
                    "ports": [_tcp(METRICS_PORT)],
                },
            ],
            "egress": egress,
        },
    }
