"""Operator settings, read from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_GATEWAY_IMAGE = "ghcr.io/qsys-operator/gateway:0.1.0"

ENV = {
    "gateway_image": "QSYS_GATEWAY_IMAGE",
    "gateway_image_pull_policy": "QSYS_GATEWAY_IMAGE_PULL_POLICY",
    "gateway_image_pull_secrets": "QSYS_GATEWAY_IMAGE_PULL_SECRETS",
    "gateway_priority_class_name": "QSYS_GATEWAY_PRIORITY_CLASS_NAME",
    "watch_namespaces": "QSYS_WATCH_NAMESPACES",
    "monitoring_namespace": "QSYS_MONITORING_NAMESPACE",
    "dns_namespace": "QSYS_DNS_NAMESPACE",
    "dns_pod_labels": "QSYS_DNS_POD_LABELS",
    "operator_namespace": "QSYS_OPERATOR_NAMESPACE",
    "gateway_probe": "QSYS_GATEWAY_PROBE",
    "gateway_probe_cidrs": "QSYS_GATEWAY_PROBE_CIDRS",
    "resync_seconds": "QSYS_RESYNC_SECONDS",
    "token_review_cluster_role": "QSYS_TOKEN_REVIEW_CLUSTER_ROLE",
}


# Names of Secrets and PriorityClasses (RFC 1123 subdomains).
DnsSubdomain = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    ),
]


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.replace(" ", ",").split(",") if part.strip()]


def _labels(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in _split(value):
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        out[key] = val
    return out


class OperatorSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gateway_image: Annotated[str, Field(min_length=1)] = DEFAULT_GATEWAY_IMAGE
    gateway_image_pull_policy: str = "IfNotPresent"
    gateway_image_pull_secrets: tuple[DnsSubdomain, ...] = ()
    """Secrets (in each QSysCore's namespace) the gateway pods pull their image with."""
    gateway_priority_class_name: DnsSubdomain | None = None
    """PriorityClass of the gateway pods; unset: the cluster's default."""
    watch_namespaces: tuple[str, ...] = ()
    """Empty: every namespace."""
    monitoring_namespace: Annotated[str, Field(min_length=1)] = "monitoring"
    """Namespace of Prometheus; the only source allowed to reach the metrics port."""
    dns_namespace: Annotated[str, Field(min_length=1)] = "kube-system"
    dns_pod_labels: Mapping[str, str] = {"k8s-app": "kube-dns"}
    """Labels of the cluster DNS pods, the gateway's only egress besides the Core."""
    operator_namespace: Annotated[str, Field(min_length=1)] = "qsys-system"
    """Where the operator runs: allowed to reach the gateways' metrics port (GET /corez)."""
    gateway_probe: bool = True
    """False: the operator never dials a gateway pod (CoreConnected stays Unknown)."""
    gateway_probe_cidrs: tuple[str, ...] = ()
    """When set, only pod IPs inside these CIDRs are probed; others are never dialled."""
    resync_seconds: Annotated[float, Field(gt=0, le=3600)] = 30
    """Period of the full resync: status refresh, Core probe, BYO token Secrets."""
    token_review_cluster_role: Annotated[str, Field(min_length=1)] = (
        "qsys-operator-gateway-tokenreview"  # noqa: S105 - a ClusterRole name
    )
    """The chart's ClusterRole that allows only `create` on tokenreviews: bound to the
    gateway ServiceAccount of a core whose policies have `serviceAccount` subjects."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field, var in ENV.items():
            raw = env.get(var, "").strip()
            if not raw:
                continue
            if field in ("watch_namespaces", "gateway_probe_cidrs", "gateway_image_pull_secrets"):
                values[field] = tuple(_split(raw))
            elif field == "dns_pod_labels":
                values[field] = _labels(raw)
            else:
                values[field] = raw
        return cls.model_validate(values)
