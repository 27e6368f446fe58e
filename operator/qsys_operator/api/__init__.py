"""The custom resources `QSysCore` and `AccessPolicy` (qsys.dev/v1alpha1) as pydantic models.

These models are the single source of truth: `qsys_operator.crdgen` derives the
CRDs from them, and the renderers read them.
"""

from .accesspolicy import (
    AccessPolicy,
    AccessPolicySpec,
    AccessPolicyStatus,
    ServiceAccountRef,
    Subject,
    TokenSecretRef,
)
from .common import (
    API_VERSION,
    CLIENT_TOKEN,
    CORE_CREDENTIALS,
    CORE_HOSTS_ANNOTATION,
    GROUP,
    SECRET_TYPE_LABEL,
    TLS,
    VERSION,
    Condition,
    LocalObjectReference,
    ObjectMeta,
)
from .qsyscore import (
    AuditSpec,
    CoreSpec,
    CoreStatus,
    CredentialsSecretRef,
    GatewaySpec,
    GatewayStatus,
    LimitsSpec,
    MonitoringSpec,
    NetworkPolicySpec,
    QSysCore,
    QSysCoreSpec,
    QSysCoreStatus,
    ServiceMonitorSpec,
)

__all__ = [
    "API_VERSION",
    "CLIENT_TOKEN",
    "CORE_CREDENTIALS",
    "CORE_HOSTS_ANNOTATION",
    "GROUP",
    "SECRET_TYPE_LABEL",
    "TLS",
    "VERSION",
    "AccessPolicy",
    "AccessPolicySpec",
    "AccessPolicyStatus",
    "AuditSpec",
    "Condition",
    "CoreSpec",
    "CoreStatus",
    "CredentialsSecretRef",
    "GatewaySpec",
    "GatewayStatus",
    "LimitsSpec",
    "LocalObjectReference",
    "MonitoringSpec",
    "NetworkPolicySpec",
    "ObjectMeta",
    "QSysCore",
    "QSysCoreSpec",
    "QSysCoreStatus",
    "ServiceAccountRef",
    "ServiceMonitorSpec",
    "Subject",
    "TokenSecretRef",
]
