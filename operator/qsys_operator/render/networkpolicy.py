"""The `X-gateway` NetworkPolicy: clients in, metrics from the scrapers, out only to Core and DNS.

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


def _endpoint_peer(host: str, settings: OperatorSettings) -> dict[str, Any] | None:
    """An endpoint's IP as itself; a DNS name (which a NetworkPolicy cannot name) as the
    namespaces the platform lets gateways reach, and none when it lets them reach none."""
    cidr = _host_cidr(host)
    if cidr:
        return {"ipBlock": {"cidr": cidr}}
    namespaces = sorted(set(settings.gateway_egress_namespaces))
    if not namespaces:
        return None
    selector = {"key": NAMESPACE_LABEL, "operator": "In", "values": namespaces}
    return {"namespaceSelector": {"matchExpressions": [selector]}}


def _redis_endpoints(storage: str) -> list[tuple[list[str], int]]:
    """(hosts, port) of the Redis storage. Behind Sentinel: each sentinel, and the primary
    they name on 6379 at the sentinels' addresses (where Sentinel runs beside Redis); a
    primary elsewhere needs a NetworkPolicy of its own (docs/policy.md)."""
    match = REDIS_URI.match(storage)
    if match:
        return [([match.group(1)], int(match.group(2) or 6379))]
    match = SENTINEL_URI.match(storage)
    if not match:
        return []
    found = [SENTINEL_HOST.match(item) for item in match.group(1).split(",")]
    sentinels = [(f.group(1), int(f.group(2) or 26379)) for f in found if f]
    hosts = list(dict.fromkeys(host for host, _ in sentinels))
    return [*(([host], port) for host, port in sentinels), (hosts, 6379)]


def _endpoints(core: QSysCore) -> list[tuple[str, list[str], int]]:
    """(what, hosts, port) of the Redis storage and the OTLP endpoint the core names."""
    out = [
        ("limits.storage", hosts, port)
        for hosts, port in _redis_endpoints(core.spec.limits.storage)
    ]
    tracing = core.spec.gateway.tracing
    otlp = OTLP_URI.match(tracing.otlpEndpoint) if tracing else None
    if otlp:
        scheme, host, port = otlp.group(1), otlp.group(2), otlp.group(3)
        default = 443 if scheme == "https" else 80
        out.append(("gateway.tracing.otlpEndpoint", [host], int(port or default)))
    return out


def endpoint_egress(core: QSysCore, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Redis rate-limit storage and the trace endpoint: only the ports they name."""
    rules = []
    for _, hosts, port in _endpoints(core):
        peers: list[dict[str, Any]] = []
        for host in hosts:
            peer = _endpoint_peer(host, settings)
            if peer is not None and peer not in peers:
                peers.append(peer)
        if peers:
            rules.append({"to": peers, "ports": [_tcp(port)]})
    return rules


def egress_note(core: QSysCore, settings: OperatorSettings) -> str | None:
    """Endpoints the NetworkPolicy cannot let the gateways reach, for the Ready message."""
    if not core.spec.networkPolicy.enabled:
        return None
    unreachable = dict.fromkeys(
        what
        for what, hosts, _ in _endpoints(core)
        if any(_endpoint_peer(h, settings) is None for h in hosts)
    )
    if not unreachable:
        return None
    return (
        f"{' and '.join(unreachable)} name a DNS host, and the platform lets gateways reach "
        "no namespace for it (operator setting gatewayEgress.namespaces): the NetworkPolicy "
        "blocks it; use an IP address or ask the platform team"
    )


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


def metrics_sources(settings: OperatorSettings) -> list[dict[str, Any]]:
    """The scrapers (settings.metrics_scrapers) and the operator's namespace (GET /corez)."""
    scrapers = settings.metrics_scrapers
    namespaces = (
        scrapers.namespaceSelector.manifest()
        if not scrapers.namespaceSelector.empty
        else {"matchLabels": {NAMESPACE_LABEL: settings.monitoring_namespace}}
    )
    scraper: dict[str, Any] = {"namespaceSelector": namespaces}
    if not scrapers.podSelector.empty:
        scraper["podSelector"] = scrapers.podSelector.manifest()
    operator = {
        "namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: settings.operator_namespace}}
    }
    return [operator] if scraper == operator else [scraper, operator]


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
    egress.extend(endpoint_egress(core, settings))
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
                {"from": metrics_sources(settings), "ports": [_tcp(METRICS_PORT)]},
            ],
            "egress": egress,
        },
    }
