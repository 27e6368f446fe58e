"""QSysCore: one Q-SYS Core (or redundant pair) and the gateway in front of it."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qsys_protocol.config import STORAGE_URI, AttackLimits, HostName, Port

from .common import (
    API_VERSION,
    PRESERVE_UNKNOWN,
    Conditions,
    Model,
    ObjectMeta,
    ObjectName,
    SecretKey,
    StatusModel,
    Timestamp,
    cel,
    validations,
)

CIDR = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        json_schema_extra=validations(cel("isCIDR(self)", "must be a CIDR, e.g. 192.0.2.0/28")),
    ),
]
LabelMap = Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=64)]
AnnotationMap = Annotated[dict[str, str], Field(max_length=128)]
Duration = Annotated[str, Field(pattern=r"^([0-9]+(ms|s|m|h))+$", max_length=32)]
StorageUri = Annotated[str, Field(max_length=512, pattern=STORAGE_URI)]
Origin = Annotated[str, Field(min_length=1, max_length=512)]
Audience = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[\x21-\x7e]+$")]
"""Printable ASCII without spaces, like a URL or a DNS name."""


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class CredentialsSecretRef(Model):
    name: ObjectName
    """Secret (same namespace) with the Core's QRC Logon user and PIN; it must carry the
    label `qsys.dev/secret-type: core-credentials` and the annotation
    `qsys.dev/core-hosts` listing `host` (and `redundantHost`), unless the platform allows
    unbound credentials (chart `coreCredentials.allowUnbound`)."""
    usernameKey: SecretKey = "username"
    """Key of the user name in the Secret."""
    passwordKey: SecretKey = "password"
    """Key of the password (PIN) in the Secret."""


class CoreSpec(Model):
    host: HostName
    """IP address or DNS name of the Core (1-253 characters), e.g. `192.0.2.10`."""
    port: Port = 1710
    """QRC TCP port of the Core (1-65535)."""
    redundantHost: HostName | None = None
    """Backup Core of a redundant pair; the gateway fails over to it."""
    credentialsSecretRef: CredentialsSecretRef | None = None
    """QRC Logon credentials, when the Core's design requires them. Unset: no Logon."""


AUTOSCALING_RANGE_RULE = cel(
    "self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas"
)


class AutoscalingSpec(Model):
    """A HorizontalPodAutoscaler `X-gateway` on CPU; `replicas` is then ignored (the HPA
    owns the Deployment's replica count, between minReplicas and maxReplicas)."""

    model_config = ConfigDict(json_schema_extra=validations(AUTOSCALING_RANGE_RULE))

    minReplicas: Annotated[int, Field(ge=1, le=50)] = 2
    """Fewest gateway pods the HorizontalPodAutoscaler keeps (1-50)."""
    maxReplicas: Annotated[int, Field(ge=1, le=50)] = 10
    """Most gateway pods the HorizontalPodAutoscaler may run (1-50, >= minReplicas)."""
    targetCPUUtilizationPercentage: Annotated[int, Field(ge=1, le=100)] = 70
    """Average CPU use of the gateway pods, in percent of their request, the autoscaler
    aims for."""
    scaleDownStabilizationSeconds: Annotated[int, Field(ge=0, le=3600)] | None = None
    """Seconds (0-3600) the autoscaler looks back before removing pods: it scales in only to
    the highest count it wanted in that window. Unset: the cluster's default (5 minutes
    unless kube-controller-manager says otherwise)."""

    @model_validator(mode="after")
    def _range(self) -> AutoscalingSpec:
        if self.minReplicas > self.maxReplicas:
            raise ValueError(AUTOSCALING_RANGE_RULE["message"])
        return self


OtlpEndpoint = Annotated[
    str,
    Field(
        max_length=512,
        pattern=r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?/?$",
    ),
]


class TracingSpec(Model):
    """OpenTelemetry export of the gateway's traces (OTLP over HTTP), set on the pods as the
    standard OTEL_* variables; the NetworkPolicy lets the pods reach the endpoint."""

    otlpEndpoint: OtlpEndpoint
    """e.g. http://otel-collector.monitoring:4318 (OTLP/HTTP; /v1/traces is appended). The
    NetworkPolicy lets the gateways reach only this port: at this IP, or, for a DNS name,
    in the namespaces the platform allows (chart `gatewayEgress.namespaces`)."""
    samplingRatio: Annotated[float, Field(ge=0, le=1)] = 1.0
    """Share of new traces recorded; a client's sampled traceparent is always followed."""


class McpSpec(Model):
    enabled: bool = False
    """Serve `/v1/mcp` (Model Context Protocol) so AI agents call the Core through the same
    subjects, rules, limits and audit (docs/mcp.md)."""


class GatewaySpec(Model):
    replicas: Annotated[int, Field(ge=1, le=50)] = 2
    """Gateway pods (1-50). Each pod enforces limits for itself unless `limits.storage` is Redis."""
    image: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    """Gateway container image, for platform teams (canaries, pinned digests): only an
    image on the platform's allow-list (chart `gatewayImage.allowed`; default: the chart's
    gateway repository, and its digest when set) is run. Any other leaves `Ready=False`
    with reason `ImageNotAllowed`, and no gateway child is created or changed. Unset: the
    operator's default gateway image (chart `gatewayImage`)."""
    resources: Annotated[dict[str, Any], Field(json_schema_extra=PRESERVE_UNKNOWN)] | None = None
    """core/v1 ResourceRequirements of the gateway container, passed through. Default:
    requests 50m CPU / 64Mi, limit 256Mi memory."""
    tlsSecretName: ObjectName | None = None
    """kubernetes.io/tls Secret (same namespace) for HTTPS/WSS and TLS on the QRC port; it
    must carry the label `qsys.dev/secret-type: tls`, and only its `tls.crt` and `tls.key`
    are mounted. Probes switch to HTTPS. Unset: plain text."""
    allowedOrigins: Annotated[list[Origin], Field(max_length=64)] = []
    """Browser origins allowed by CORS (max 64), e.g. `https://panel.example.org`. Empty: no
    cross-origin requests."""
    nodeSelector: LabelMap = {}
    """Node labels the gateway pods must match, passed to the pod spec."""
    tolerations: Annotated[
        list[Annotated[dict[str, Any], Field(json_schema_extra=PRESERVE_UNKNOWN)]],
        Field(max_length=64),
    ] = []
    """core/v1 Tolerations of the gateway pods, passed through (max 64)."""
    affinity: Annotated[dict[str, Any], Field(json_schema_extra=PRESERVE_UNKNOWN)] | None = None
    """core/v1 Affinity of the gateway pods, passed through."""
    podAnnotations: AnnotationMap = {}
    """Extra annotations on the gateway pods (max 128)."""
    qrcOnCoreLoss: Literal["keep", "close"] = "close"
    """Raw QRC clients while the Core is unreachable: `close` their sockets as the Core's
    would (default), or `keep` them and answer -32050."""
    mcp: McpSpec = McpSpec()
    """The MCP endpoint for AI agents."""
    autoscaling: AutoscalingSpec | None = None
    """Scale the gateway with a HorizontalPodAutoscaler instead of fixed `replicas`."""
    tracing: TracingSpec | None = None
    """OpenTelemetry traces of the gateway's calls. Unset: no tracing."""
    serviceAccountAudience: Audience | None = None
    """Audience the projected ServiceAccount tokens of `serviceAccount` subjects must carry
    (the pod's `serviceAccountToken.audience`); tokens for any other audience are refused.
    Unset: `<name>-gateway.<namespace>.svc`. The value in effect is in
    `status.gateway.serviceAccountAudience`."""

    @property
    def min_replicas(self) -> int:
        """The replicas the gateway keeps at least: `replicas`, or the HPA's minimum."""
        return self.autoscaling.minReplicas if self.autoscaling else self.replicas


class LimitsSpec(Model, AttackLimits):
    requestsPerSecond: Annotated[float, Field(gt=0, le=100000)] = 20
    """Sustained calls per second per subject (> 0) unless its AccessPolicy sets
    `rateLimit`. See docs/policy.md for the windows."""
    burst: Annotated[int, Field(ge=1, le=1000000)] = 500
    """Calls per subject allowed at once unless its AccessPolicy sets `rateLimit`; raised to
    one second's worth when below `requestsPerSecond`. Sized for a panel SDK's
    start-up of a few hundred calls (docs/gateway.md)."""
    maxClients: Annotated[int, Field(ge=1, le=100000)] = 1000
    """Connected, logged-on clients per gateway pod; further ones are refused."""
    maxMessageBytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 262144
    """Largest request message in bytes (1024 - 16777216); larger ones are refused before
    parsing."""
    requestTimeoutSeconds: Annotated[float, Field(gt=0, le=300)] = 5
    """Seconds the gateway waits for the Core's answer to one call (> 0, max 300)."""
    storage: StorageUri = "memory"
    """Where rate-limit counters live: `memory` (per pod), or `redis://host:port/db` /
    `rediss://...` / `redis+sentinel://host:port[,host:port...]/primary-name` (Redis
    Sentinel) so all replicas share one limit. Buckets are keyed by this QSysCore's
    namespace and name, so cores may share one Redis. Egress as for
    `tracing.otlpEndpoint`: the ports named only, at these IPs or in the namespaces the
    platform allows."""


class NetworkPolicySpec(Model):
    enabled: bool = True
    """Render a NetworkPolicy: ingress only from `allowedClients`, egress only to the Core
    and DNS."""
    allowedClients: (
        Annotated[
            list[Annotated[dict[str, Any], Field(json_schema_extra=PRESERVE_UNKNOWN)]],
            Field(max_length=64),
        ]
        | None
    ) = None
    """networking/v1 NetworkPolicyPeers allowed to reach the gateway (max 64). Unset: pods
    of the same namespace."""
    coreCIDRs: Annotated[list[CIDR], Field(max_length=32)] = []
    """CIDRs of the Core(s) for the egress rule (max 32), e.g. `192.0.2.0/28`. Needed when
    `core.host` is a DNS name."""


class ServiceMonitorSpec(Model):
    enabled: bool = True
    """Render a prometheus-operator ServiceMonitor (only when its CRD is installed)."""
    interval: Duration = "30s"
    """Scrape interval, a Prometheus duration such as `30s` or `1m30s`."""
    labels: LabelMap = {}
    """Extra labels on the ServiceMonitor, e.g. to match a Prometheus `serviceMonitorSelector`."""


class MonitoringSpec(Model):
    serviceMonitor: ServiceMonitorSpec = ServiceMonitorSpec()
    """Prometheus scraping of the gateway's metrics port."""


class AuditSpec(Model):
    logReads: bool = False
    """Audit reads (Get, Poll) too, not only writes and refusals. Raises log volume."""


CORE_ADDRESS_RULE = cel(
    "!self.networkPolicy.enabled || size(self.networkPolicy.coreCIDRs) > 0 || "
    "(isIP(self.core.host) && (!has(self.core.redundantHost) || isIP(self.core.redundantHost)))",
    "networkPolicy.coreCIDRs must be set when core.host or core.redundantHost is a DNS name "
    "and networkPolicy is enabled",
    ".networkPolicy.coreCIDRs",
)


_OWN_SECRETS = "[self.metadata.name + '-gateway-config', self.metadata.name + '-gateway-token-key']"
_OWN_SECRETS_MESSAGE = (
    "must not name the operator's own Secrets of this QSysCore "
    "(<name>-gateway-config, <name>-gateway-token-key)"
)
OWN_SECRETS_RULES = [
    cel(
        "!has(self.spec.core.credentialsSecretRef) || "
        f"!(self.spec.core.credentialsSecretRef.name in {_OWN_SECRETS})",
        f"spec.core.credentialsSecretRef {_OWN_SECRETS_MESSAGE}",
    ),
    cel(
        "!has(self.spec.gateway) || !has(self.spec.gateway.tlsSecretName) || "
        f"!(self.spec.gateway.tlsSecretName in {_OWN_SECRETS})",
        f"spec.gateway.tlsSecretName {_OWN_SECRETS_MESSAGE}",
    ),
]
"""A tenant cannot point the gateway at the Secrets the operator writes for it."""


class QSysCoreSpec(Model):
    model_config = ConfigDict(json_schema_extra=validations(CORE_ADDRESS_RULE))

    core: CoreSpec
    """The Q-SYS Core (or redundant pair) the gateway connects to."""
    gateway: GatewaySpec = GatewaySpec()
    """The gateway Deployment in front of the Core."""
    limits: LimitsSpec = LimitsSpec()
    """Per-subject rate and per-pod connection and message limits."""
    networkPolicy: NetworkPolicySpec = NetworkPolicySpec()
    """The NetworkPolicy around the gateway pods."""
    monitoring: MonitoringSpec = MonitoringSpec()
    """Prometheus integration."""
    audit: AuditSpec = AuditSpec()
    """Audit log settings."""

    @model_validator(mode="after")
    def _core_addressable(self) -> QSysCoreSpec:
        """The Python twin of CORE_ADDRESS_RULE."""
        hosts = [self.core.host, self.core.redundantHost or self.core.host]
        np = self.networkPolicy
        if np.enabled and not np.coreCIDRs and not all(is_ip(h) for h in hosts):
            raise ValueError(CORE_ADDRESS_RULE["message"])
        return self


class GatewayStatus(StatusModel):
    readyReplicas: Annotated[int, Field(ge=0)] | None = None
    """Gateway pods that are Ready."""
    service: str | None = None
    """Name of the gateway Service clients connect to."""
    serviceAccountAudience: str | None = None
    """The audience a pod's projected ServiceAccount token must carry to be admitted as a
    `serviceAccount` subject (spec.gateway.serviceAccountAudience or its default)."""


class CoreStatus(StatusModel):
    state: str | None = None
    """Core state as the gateways report it: Active, Standby, Idle, or Unreachable."""
    designName: str | None = None
    """Name of the design running on the Core."""
    platform: str | None = None
    """Core model, e.g. `Core 110f`."""
    lastSeen: Timestamp | None = None
    """When a gateway last reached the Core (RFC 3339)."""


class QSysCoreStatus(StatusModel):
    observedGeneration: int | None = None
    """The `metadata.generation` this status describes."""
    conditions: Conditions = []
    """Ready, GatewayAvailable, CoreConnected (and more), metav1.Condition."""
    gateway: GatewayStatus | None = None
    """The gateway Deployment and Service."""
    core: CoreStatus | None = None
    """The Core as the gateways see it."""
    subjects: Annotated[int, Field(ge=0)] | None = None
    """Subjects (from every bound AccessPolicy) in the gateway config."""


class QSysCore(BaseModel):
    """The whole resource as the API server returns it (e.g. a Kopf body)."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        extra="ignore",
        populate_by_name=True,
        json_schema_extra=validations(*OWN_SECRETS_RULES),
    )

    KIND: ClassVar[str] = "QSysCore"
    PLURAL: ClassVar[str] = "qsyscores"
    DESCRIPTION: ClassVar[str] = (
        "One Q-SYS Core (or redundant pair) and the hardened QRC gateway in front of it: "
        "the operator runs gateway pods that admit the subjects of the AccessPolicies bound "
        "to this Core, with their rules, rate limits and audit."
    )

    apiVersion: Literal["qsys.dev/v1alpha1"] = API_VERSION  # type: ignore[assignment]
    kind: Literal["QSysCore"] = "QSysCore"
    metadata: ObjectMeta
    spec: QSysCoreSpec
    """The Core and how its gateway runs."""
    status: QSysCoreStatus = QSysCoreStatus()
    """Written by the operator: gateway readiness, the Core as the gateways see it."""

    @property
    def service_account_audience(self) -> str:
        """spec.gateway.serviceAccountAudience, or its default `<name>-gateway.<ns>.svc`."""
        meta = self.metadata
        return (
            self.spec.gateway.serviceAccountAudience or f"{meta.name}-gateway.{meta.namespace}.svc"
        )
