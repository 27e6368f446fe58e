"""Operator settings, read from the environment (the Helm chart sets them)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from importlib.metadata import version
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .images import AllowedImage, allow_list

# The gateway image of this release: tagged with the project's one version (pyproject.toml).
DEFAULT_GATEWAY_IMAGE = f"ghcr.io/qsys-operator/gateway:{version('qsys-operator')}"

ENV = {
    "gateway_image": "QSYS_GATEWAY_IMAGE",
    "gateway_image_pull_policy": "QSYS_GATEWAY_IMAGE_PULL_POLICY",
    "gateway_allowed_images": "QSYS_GATEWAY_ALLOWED_IMAGES",
    "gateway_egress_namespaces": "QSYS_GATEWAY_EGRESS_NAMESPACES",
    "allow_unbound_credentials": "QSYS_ALLOW_UNBOUND_CREDENTIALS",
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
    "monitoring_labels": "QSYS_MONITORING_LABELS",
    "metrics_scrapers": "QSYS_METRICS_SCRAPERS",
    "token_proof_secret": "QSYS_TOKEN_PROOF_SECRET",
    "max_cores_per_namespace": "QSYS_MAX_CORES_PER_NAMESPACE",
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


def _json(var: str, raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{var} is not JSON: {exc.msg} at {exc.pos}") from None


class SelectorRequirement(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    key: Annotated[str, Field(min_length=1)]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = ()


class LabelSelector(BaseModel):
    """A Kubernetes LabelSelector, as NetworkPolicy peers take it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    matchLabels: Mapping[str, str] = {}
    matchExpressions: tuple[SelectorRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.matchLabels and not self.matchExpressions

    def manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.matchLabels:
            out["matchLabels"] = dict(sorted(self.matchLabels.items()))
        if self.matchExpressions:
            out["matchExpressions"] = [
                {
                    "key": r.key,
                    "operator": r.operator,
                    **({"values": list(r.values)} if r.values else {}),
                }
                for r in self.matchExpressions
            ]
        return out


class MetricsScrapers(BaseModel):
    """Who may reach the gateways' metrics port: pods matching podSelector in namespaces
    matching namespaceSelector. An empty namespaceSelector means the namespace named
    `monitoring_namespace`; an empty podSelector, every pod of those namespaces."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespaceSelector: LabelSelector = LabelSelector()
    podSelector: LabelSelector = LabelSelector()


class OperatorSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gateway_image: Annotated[str, Field(min_length=1)] = DEFAULT_GATEWAY_IMAGE
    gateway_image_pull_policy: str = "IfNotPresent"
    gateway_allowed_images: tuple[str, ...] = ()
    """The images a QSysCore's spec.gateway.image may name: `REPOSITORY` (any tag or
    digest of it) or `REPOSITORY@sha256:...` (that digest only). Empty: the repository of
    `gateway_image`, and its digest when it has one (images.py)."""
    gateway_egress_namespaces: tuple[str, ...] = ()
    """Namespaces a gateway may reach a DNS-named tracing endpoint or Redis in (on the
    port named). Empty: DNS-named endpoints get no egress."""
    allow_unbound_credentials: bool = False
    """Use a core-credentials Secret without the qsys.dev/core-hosts annotation (sent to
    any core.host the QSysCore names). False: such Secrets are refused."""
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
    monitoring_labels: Mapping[str, str] = {}
    """Extra labels on every ServiceMonitor the operator renders (kube-prometheus-stack
    selects by `release: <its release>`)."""
    metrics_scrapers: MetricsScrapers = MetricsScrapers()
    token_proof_secret: Annotated[str, Field(min_length=1, max_length=253)] = (
        "qsys-operator-token-proof-key"  # noqa: S105 - a Secret name
    )
    """Secret in operator_namespace holding the key of the generated tokens' proofs."""
    max_cores_per_namespace: Annotated[int, Field(ge=0)] = 0
    """At most this many QSysCores of one namespace are rendered (the oldest); the others
    are `Ready=False`, `CoreLimitExceeded`. 0: no limit."""

    @model_validator(mode="after")
    def _images(self) -> OperatorSettings:
        self.allowed_images  # noqa: B018 - refuse a malformed allow-list at start
        return self

    @property
    def allowed_images(self) -> tuple[AllowedImage, ...]:
        return allow_list(self.gateway_image, self.gateway_allowed_images)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field, var in ENV.items():
            raw = env.get(var, "").strip()
            if not raw:
                continue
            if field in (
                "watch_namespaces",
                "gateway_probe_cidrs",
                "gateway_image_pull_secrets",
                "gateway_allowed_images",
                "gateway_egress_namespaces",
            ):
                values[field] = tuple(_split(raw))
            elif field in ("dns_pod_labels", "monitoring_labels"):
                values[field] = _labels(raw)
            elif field == "metrics_scrapers":
                values[field] = _json(var, raw)
            else:
                values[field] = raw
        return cls.model_validate(values)
