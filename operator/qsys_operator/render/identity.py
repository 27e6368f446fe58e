"""The gateway's own Kubernetes identity, rendered only while a bound policy has
`serviceAccount` subjects: the ServiceAccount `<core>-gateway` its pods run as, and a
ClusterRoleBinding of it to the chart's TokenReview ClusterRole.

A ClusterRoleBinding is cluster-scoped, so it cannot be owned by the namespaced
QSysCore: it carries the core's labels plus its namespace in CORE_NAMESPACE_LABEL, and
`<namespace>/<core>` in OWNER_ANNOTATION, which the operator checks before it applies to
or deletes a binding of that name (ownership.py); it deletes it when the core no longer
needs it or is deleted.
"""

from __future__ import annotations

import hashlib

from ..api import QSysCore
from ..kinds import CLUSTER_ROLE_BINDING, SERVICE_ACCOUNT
from ..settings import OperatorSettings
from .common import Manifest, child_metadata, gateway_name, labels

CORE_NAMESPACE_LABEL = "qsys.dev/core-namespace"
OWNER_ANNOTATION = "qsys.dev/owner"
BINDING_PREFIX = "qsys-gateway-tokenreview"
MAX_NAME = 253


def token_review_binding_name(namespace: str, core: str) -> str:
    """`qsys-gateway-tokenreview:<namespace>:<core>`: one per core, the same every time
    (colons cannot occur in either name, so no two cores share one)."""
    name = f"{BINDING_PREFIX}:{namespace}:{core}"
    if len(name) <= MAX_NAME:
        return name
    suffix = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{name[: MAX_NAME - len(suffix) - 1]}-{suffix}"


def owner_annotation(namespace: str, core: str) -> str:
    return f"{namespace}/{core}"


def render_service_account(core: QSysCore) -> Manifest:
    """Tokens are not mounted by default: only the gateway pods opt in."""
    return {
        "apiVersion": SERVICE_ACCOUNT.api_version,
        "kind": SERVICE_ACCOUNT.kind,
        "metadata": child_metadata(core, gateway_name(core.metadata.name)),
        "automountServiceAccountToken": False,
    }


def render_token_review_binding(core: QSysCore, settings: OperatorSettings) -> Manifest:
    meta = core.metadata
    return {
        "apiVersion": CLUSTER_ROLE_BINDING.api_version,
        "kind": CLUSTER_ROLE_BINDING.kind,
        "metadata": {
            "name": token_review_binding_name(meta.namespace, meta.name),
            "labels": {**labels(meta.name), CORE_NAMESPACE_LABEL: meta.namespace},
            "annotations": {OWNER_ANNOTATION: owner_annotation(meta.namespace, meta.name)},
        },
        "roleRef": {
            "apiGroup": CLUSTER_ROLE_BINDING.group,
            "kind": "ClusterRole",
            "name": settings.token_review_cluster_role,
        },
        "subjects": [
            {
                "kind": SERVICE_ACCOUNT.kind,
                "name": gateway_name(meta.name),
                "namespace": meta.namespace,
            }
        ],
    }
