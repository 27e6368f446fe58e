"""QSysCore: one Q-SYS Core (or redundant pair) and the gateway in front of it."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qsys_protocol.config import AttackLimits, HostName, Port

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
StorageUri = Annotated[
    str, Field(max_length=512, pattern=r"^(memory|rediss?://[^\s/]+(:[0-9]+)?(/[0-9]+)?)$")
]
Origin = Annotated[str, Field(min_length=1, max_length=512)]


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class CredentialsSecretRef(Model):
    name: ObjectName
    usernameKey: SecretKey = "username"
    passwordKey: SecretKey = "password"


class CoreSpec(Model):
    host: HostName
    port: Port = 1710
    redundantHost: HostName | None = None
    credentialsSecretRef: CredentialsSecretRef | None = None


AUTOSCALING_RANGE_RULE = cel(
    "self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas"
)


class AutoscalingSpec(Model):
    """A HorizontalPodAutoscaler `X-gateway` on CPU; `replicas` is then ignored (the HPA
    owns the Deployment's replica count, between minReplicas and maxReplicas)."""

    model_config = ConfigDict(json_schema_extra=validations(AUTOSCALING_RANGE_RULE))

    minReplicas: Annotated[int, Field(ge=1, le=50)] = 2
    maxReplicas: Annotated[int, Field(ge=1, le=50)] = 10
    targetCPUUtilizationPercentage: Annotated[int, Field(ge=1, le=100)] = 70

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
    """e.g. http://otel-collector.monitoring:4318 (OTLP/HTTP; /v1/traces is appended)."""
    samplingRatio: Annotated[float, Field(ge=0, le=1)] = 1.0
    """Share of new traces recorded; a client's sampled traceparent is always followed."""


class McpSpec(Model):
    enabled: bool = False


class GatewaySpec(Model):
    replicas: Annotated[int, Field(ge=1, le=50)] = 2
    image: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    resources: Annotated[dict[str, Any], Field(json_schema_extra=PRESERVE_UNKNOWN)] | None = None
    tlsSecretName: ObjectName | None = None
    allowedOrigins: Annotated[list[Origin], Field(max_length=64)] = []
    nodeSelector: LabelMap = {}
    tolerations: Annotated[
        list[Annotated[dict[str, Any], Field(json_schema_extra=PRESERVE_UNKNOWN)]],
        Field(max_length=64),
    ] = []
    affinity: Annotated[dict[str, Any], Field(json_schema_extra=PRESERVE_UNKNOWN)] | None = None
    podAnnotations: AnnotationMap = {}
    qrcOnCoreLoss: Literal["keep", "close"] = "close"
    """Raw QRC clients while the Core is unreachable: `close` their sockets as the Core's
    would (default), or `keep` them and answer -32050."""
    mcp: McpSpec = McpSpec()
    autoscaling: AutoscalingSpec | None = None
    tracing: TracingSpec | None = None

    @property
    def min_replicas(self) -> int:
        """The replicas the gateway keeps at least: `replicas`, or the HPA's minimum."""
        return self.autoscaling.minReplicas if self.autoscaling else self.replicas


class LimitsSpec(Model, AttackLimits):
    requestsPerSecond: Annotated[float, Field(gt=0, le=100000)] = 20
    burst: Annotated[int, Field(ge=1, le=1000000)] = 40
    maxClients: Annotated[int, Field(ge=1, le=100000)] = 1000
    maxMessageBytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 262144
    requestTimeoutSeconds: Annotated[float, Field(gt=0, le=300)] = 5
    storage: StorageUri = "memory"


class NetworkPolicySpec(Model):
    enabled: bool = True
    allowedClients: (
        Annotated[
            list[Annotated[dict[str, Any], Field(json_schema_extra=PRESERVE_UNKNOWN)]],
            Field(max_length=64),
        ]
        | None
    ) = None
    coreCIDRs: Annotated[list[CIDR], Field(max_length=32)] = []


class ServiceMonitorSpec(Model):
    enabled: bool = True
    interval: Duration = "30s"
    labels: LabelMap = {}


class MonitoringSpec(Model):
    serviceMonitor: ServiceMonitorSpec = ServiceMonitorSpec()


class AuditSpec(Model):
    logReads: bool = False


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
    gateway: GatewaySpec = GatewaySpec()
    limits: LimitsSpec = LimitsSpec()
    networkPolicy: NetworkPolicySpec = NetworkPolicySpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    audit: AuditSpec = AuditSpec()

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
    service: str | None = None


class CoreStatus(StatusModel):
    state: str | None = None
    designName: str | None = None
    platform: str | None = None
    lastSeen: Timestamp | None = None


class QSysCoreStatus(StatusModel):
    observedGeneration: int | None = None
    conditions: Conditions = []
    gateway: GatewayStatus | None = None
    core: CoreStatus | None = None
    subjects: Annotated[int, Field(ge=0)] | None = None


class QSysCore(BaseModel):
    """The whole resource as the API server returns it (e.g. a Kopf body)."""

    model_config = ConfigDict(
        extra="ignore",
        populate_by_name=True,
        json_schema_extra=validations(*OWN_SECRETS_RULES),
    )

    KIND: ClassVar[str] = "QSysCore"
    PLURAL: ClassVar[str] = "qsyscores"

    apiVersion: Literal["qsys.dev/v1alpha1"] = API_VERSION  # type: ignore[assignment]
    kind: Literal["QSysCore"] = "QSysCore"
    metadata: ObjectMeta
    spec: QSysCoreSpec
    status: QSysCoreStatus = QSysCoreStatus()
