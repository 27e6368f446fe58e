"""Names, labels and owner references shared by every rendered child."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from ..api import QSysCore
from ..api.common import ObjectMeta
from ..kinds import SECRET

Manifest = dict[str, Any]

MANAGED_BY = "qsys-operator"
APP_NAME = "qsys-gateway"
RESTART_HASH_ANNOTATION = "qsys.dev/restart-hash"
HTTP_PORT = 8080
QRC_PORT = 1710
METRICS_PORT = 9090


def gateway_name(core_name: str) -> str:
    return f"{core_name}-gateway"


def config_secret_name(core_name: str) -> str:
    return f"{core_name}-gateway-config"


def token_key_secret_name(core_name: str) -> str:
    return f"{core_name}-gateway-token-key"


def token_secret_name(policy_name: str, subject_name: str) -> str:
    return f"{policy_name}-{subject_name}-token"


def selector_labels(core_name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": core_name}


def labels(core_name: str) -> dict[str, str]:
    return {**selector_labels(core_name), "app.kubernetes.io/managed-by": MANAGED_BY}


def owner_reference(api_version: str, kind: str, meta: ObjectMeta) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": meta.name,
        "uid": meta.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(core: QSysCore, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": core.metadata.namespace,
        "labels": labels(core.metadata.name),
        "ownerReferences": [owner_reference(core.apiVersion, core.kind, core.metadata)],
    }


def opaque_secret(metadata: dict[str, Any], data: dict[str, str]) -> Manifest:
    """A core/v1 Secret of type Opaque; data values are plain text (encoded here)."""
    return {
        "apiVersion": SECRET.api_version,
        "kind": SECRET.kind,
        "metadata": metadata,
        "type": "Opaque",
        "data": {k: b64(v) for k, v in data.items()},
    }


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def digest(data: Any) -> str:
    """Stable SHA-256 over JSON-able data."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()
