"""The `X-gateway` Deployment: a hardened, spread-out gateway pod template."""

from __future__ import annotations

from typing import Any

from ..api import QSysCore
from ..kinds import DEPLOYMENT
from ..settings import OperatorSettings
from .common import (
    HTTP_PORT,
    METRICS_PORT,
    QRC_PORT,
    RESTART_HASH_ANNOTATION,
    Manifest,
    child_metadata,
    config_secret_name,
    gateway_name,
    labels,
    selector_labels,
    token_key_secret_name,
)
from .config import (
    CONFIG_DIR,
    CONFIG_KEY,
    CONFIG_PATH,
    CREDENTIALS_DIR,
    TLS_DIR,
    TLS_KEYS,
    TOKEN_KEY_FILE,
)
from .tokens import TOKEN_KEY_KEY

RUN_AS = 10001
SECRET_MODE = 0o440  # owner and fsGroup may read; the gateway runs as a non-root UID
DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"memory": "256Mi"},
}


def _probe(path: str, scheme: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http", "scheme": scheme},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _volumes(core: QSysCore) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts). Whole-directory Secret mounts: subPath would freeze updates."""
    spec = core.spec
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "projected": {
                "defaultMode": SECRET_MODE,
                "sources": [
                    {
                        "secret": {
                            "name": config_secret_name(core.metadata.name),
                            "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}],
                        }
                    },
                    {
                        "secret": {
                            "name": token_key_secret_name(core.metadata.name),
                            "items": [{"key": TOKEN_KEY_KEY, "path": TOKEN_KEY_FILE}],
                        }
                    },
                ],
            },
        },
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir, not the host's /tmp
    ]
    creds = spec.core.credentialsSecretRef
    if creds:
        volumes.append(
            {
                "name": "core-credentials",
                "secret": {
                    "secretName": creds.name,
                    "defaultMode": SECRET_MODE,
                    "items": [
                        {"key": creds.usernameKey, "path": "username"},
                        {"key": creds.passwordKey, "path": "password"},
                    ],
                },
            }
        )
        mounts.append({"name": "core-credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True})
    if spec.gateway.tlsSecretName:
        volumes.append(
            {
                "name": "tls",
                "secret": {
                    "secretName": spec.gateway.tlsSecretName,
                    "defaultMode": SECRET_MODE,
                    # Only the certificate and key, whatever else the Secret holds.
                    "items": [{"key": k, "path": k} for k in TLS_KEYS],
                },
            }
        )
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    return volumes, mounts


def tracing_env(core: QSysCore) -> list[dict[str, str]]:
    """spec.gateway.tracing as the standard OTEL_* variables (docs/tracing.md)."""
    tracing = core.spec.gateway.tracing
    if tracing is None:
        return []
    name, ns = core.metadata.name, core.metadata.namespace
    values = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": tracing.otlpEndpoint.rstrip("/"),
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": f"{tracing.samplingRatio:g}",
        "OTEL_SERVICE_NAME": gateway_name(name),
        "OTEL_RESOURCE_ATTRIBUTES": f"k8s.namespace.name={ns},qsys.core={name}",
    }
    return [{"name": k, "value": v} for k, v in values.items()]


PRE_STOP_SLEEP_S = 5


def _container(core: QSysCore, settings: OperatorSettings) -> dict[str, Any]:
    gw = core.spec.gateway
    scheme = "HTTPS" if gw.tlsSecretName else "HTTP"
    _, mounts = _volumes(core)
    env = tracing_env(core)
    return {
        **({"env": env} if env else {}),
        "name": "gateway",
        "image": gw.image or settings.gateway_image,
        "imagePullPolicy": settings.gateway_image_pull_policy,
        "command": ["qsys-gateway"],
        "args": ["--config", CONFIG_PATH],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "qrc", "containerPort": QRC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "startupProbe": _probe("/livez", scheme, period=2, failures=30),
        "livenessProbe": _probe("/livez", scheme, period=10, failures=3),
        # /readyz means "this pod can serve"; it does not follow the Core's health.
        "readinessProbe": _probe("/readyz", scheme, period=5, failures=2),
        # Keep serving while the pod leaves the Service: kube-proxy on every node
        # drops it a moment after it turns Terminating, and a SIGTERM at once
        # would refuse the connections routed to it meanwhile (seen on real pods
        # during a rollout).
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SLEEP_S}}},
        "resources": gw.resources if gw.resources is not None else DEFAULT_RESOURCES,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }


def render_deployment(
    core: QSysCore, settings: OperatorSettings, restart_hash: str, identity: bool = False
) -> Manifest:
    """identity: the pods run as the `<core>-gateway` ServiceAccount with its API token
    mounted (for TokenReviews); otherwise they get no API credentials at all."""
    name = core.metadata.name
    gw = core.spec.gateway
    volumes, _ = _volumes(core)
    spread = [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(name)},
        }
        for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
    ]
    # The deprecated `serviceAccount` is applied too: the API server copies it into an
    # unset serviceAccountName, so leaving it to the server would keep the pods on the
    # gateway's ServiceAccount after an apply that drops serviceAccountName.
    account = {"serviceAccountName": gateway_name(name), "serviceAccount": gateway_name(name)}
    pod_spec: dict[str, Any] = {
        **(account if identity else {}),
        "automountServiceAccountToken": identity,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "topologySpreadConstraints": spread,
        "containers": [_container(core, settings)],
        "volumes": volumes,
    }
    if settings.gateway_image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in settings.gateway_image_pull_secrets]
    if settings.gateway_priority_class_name:
        pod_spec["priorityClassName"] = settings.gateway_priority_class_name
    if gw.nodeSelector:
        pod_spec["nodeSelector"] = dict(sorted(gw.nodeSelector.items()))
    if gw.tolerations:
        pod_spec["tolerations"] = list(gw.tolerations)
    if gw.affinity:
        pod_spec["affinity"] = gw.affinity
    annotations = {**dict(sorted(gw.podAnnotations.items())), RESTART_HASH_ANNOTATION: restart_hash}
    spec: dict[str, Any] = {} if gw.autoscaling else {"replicas": gw.replicas}
    return {
        "apiVersion": DEPLOYMENT.api_version,
        "kind": DEPLOYMENT.kind,
        "metadata": child_metadata(core, gateway_name(name)),
        "spec": {
            # With autoscaling the HPA owns replicas: leaving the field out of the apply
            # keeps server-side apply from resetting what the HPA set (docs/autoscaling.md).
            **spec,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector_labels(name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": labels(name), "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }
