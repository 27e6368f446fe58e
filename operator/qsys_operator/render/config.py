"""The `X-gateway-config` Secret: `gateway.yaml` built with the gateway's own model."""

from __future__ import annotations

from qsys_protocol.config import (
    AuditConfig,
    AuthConfig,
    CoreConfig,
    CorsConfig,
    GatewayConfig,
    LimitsConfig,
    ListenConfig,
    McpConfig,
    QSysCoreRef,
    RateConfig,
    SubjectConfig,
    TlsConfig,
    TokenReviewConfig,
    dump_config,
)

from ..api import QSysCore
from .common import (
    HTTP_PORT,
    METRICS_PORT,
    QRC_PORT,
    Manifest,
    child_metadata,
    digest,
    opaque_secret,
)
from .common import config_secret_name as secret_name

CONFIG_DIR = "/etc/qsys-gateway"
CONFIG_KEY = "gateway.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
TOKEN_KEY_FILE = "token-key"  # noqa: S105 - a file name
"""In the config directory: one projected volume, so kubelet swaps config and key together."""
CREDENTIALS_DIR = "/var/run/qsys/core-credentials"
TLS_DIR = "/var/run/qsys/tls"
TLS_KEYS = ("tls.crt", "tls.key")
"""The keys of a kubernetes.io/tls Secret, the only ones mounted."""


def uses_identity(subjects: list[SubjectConfig]) -> bool:
    """Some subject is a ServiceAccount: the gateway reviews tokens with the API server."""
    return any(s.serviceAccount for s in subjects)


def gateway_config(core: QSysCore, subjects: list[SubjectConfig]) -> GatewayConfig:
    spec = core.spec
    creds = spec.core.credentialsSecretRef
    return GatewayConfig(
        qsysCore=QSysCoreRef(namespace=core.metadata.namespace, name=core.metadata.name),
        core=CoreConfig(
            host=spec.core.host,
            port=spec.core.port,
            redundantHost=spec.core.redundantHost,
            usernameFile=f"{CREDENTIALS_DIR}/username" if creds else None,
            passwordFile=f"{CREDENTIALS_DIR}/password" if creds else None,
            requestTimeoutSeconds=spec.limits.requestTimeoutSeconds,
        ),
        listen=ListenConfig(
            http=HTTP_PORT,
            qrc=QRC_PORT,
            metrics=METRICS_PORT,
            qrcOnCoreLoss=spec.gateway.qrcOnCoreLoss,
            tls=(
                TlsConfig(certFile=f"{TLS_DIR}/{TLS_KEYS[0]}", keyFile=f"{TLS_DIR}/{TLS_KEYS[1]}")
                if spec.gateway.tlsSecretName
                else None
            ),
        ),
        limits=LimitsConfig(
            maxClients=spec.limits.maxClients,
            maxMessageBytes=spec.limits.maxMessageBytes,
            rate=RateConfig(
                requestsPerSecond=spec.limits.requestsPerSecond, burst=spec.limits.burst
            ),
            storage=spec.limits.storage,
            **spec.limits.attack_limits(),
        ),
        audit=AuditConfig(logReads=spec.audit.logReads),
        cors=CorsConfig(allowedOrigins=list(spec.gateway.allowedOrigins)),
        auth=AuthConfig(tokenKeyFile=f"{CONFIG_DIR}/{TOKEN_KEY_FILE}"),
        mcp=McpConfig(enabled=spec.gateway.mcp.enabled),
        tokenReview=(
            TokenReviewConfig(audience=core.service_account_audience)
            if uses_identity(subjects)
            else None
        ),
        subjects=subjects,
    )


def restart_hash(config: GatewayConfig) -> str:
    """Hash of the config sections the gateway applies only at start-up.

    Mirrors `qsys_gateway.runtime.Runtime.apply`: core, listen, limits.storage
    and audit.path. Everything else (subjects, rules, rates) hot-reloads.
    """
    return digest(
        {
            "core": config.core.model_dump(mode="json"),
            "listen": config.listen.model_dump(mode="json"),
            "storage": config.limits.storage,
            "auditPath": config.audit.path,
        }
    )


def render_config_secret(core: QSysCore, config: GatewayConfig) -> Manifest:
    metadata = child_metadata(core, secret_name(core.metadata.name))
    return opaque_secret(metadata, {CONFIG_KEY: dump_config(config)})
