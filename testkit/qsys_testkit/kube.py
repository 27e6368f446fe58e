"""Small Kubernetes API helpers for tests (the `kubernetes` client)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .net import wait_for

REAL_NODE_LABEL = ("qsys.io/node", "real")
"""The label and taint of the local cluster's real node (hack/cluster/node.sh); kwok's fake
nodes carry neither."""
REAL_NODE_ANNOTATIONS = {
    "scheduler.alpha.kubernetes.io/node-selector": "=".join(REAL_NODE_LABEL),
    "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps(
        [
            {
                "key": REAL_NODE_LABEL[0],
                "operator": "Equal",
                "value": REAL_NODE_LABEL[1],
                "effect": "NoSchedule",
            }
        ]
    ),
}
"""Namespace annotations that pin every pod of the namespace to the real node
(PodNodeSelector and PodTolerationRestriction admission)."""
RESTRICTED_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""A container securityContext under the restricted Pod Security profile, as the gateway
runs (user 10001 of the images)."""


CRD_APPLY_ATTEMPTS = 5


def _holds(live: Any, wanted: Any) -> bool:
    """Whether live (as the apiserver gives it, defaults filled in) says all wanted does."""
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(
            k in live and _holds(live[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(live) == len(wanted)
            and all(_holds(a, b) for a, b in zip(live, wanted, strict=True))
        )
    return bool(live == wanted)


def _create_or_replace_crd(ext: client.ApiextensionsV1Api, body: Any) -> None:
    """body: a CRD as YAML gives it (the client serialises a dict as it is).

    A CRD whose spec already holds body's is left alone, and a replaced one keeps the
    labels and annotations it had: another lane's release or Argo CD Application may own
    it (its tracking annotation, Helm's labels), and a replace that dropped them would
    show that Application OutOfSync."""
    name = body["metadata"]["name"]
    try:
        current = ext.read_custom_resource_definition(name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        ext.create_custom_resource_definition(body)
        return
    live = ext.api_client.sanitize_for_serialization(current)
    if _holds(live["spec"], body["spec"]):
        return
    meta = live["metadata"]
    for key in ("labels", "annotations"):
        body["metadata"][key] = {**meta.get(key, {}), **body["metadata"].get(key, {})}
    body["metadata"]["resourceVersion"] = meta["resourceVersion"]
    ext.replace_custom_resource_definition(name, body)


def apply_crds(api: client.ApiClient, crds: Path | Iterable[Path], timeout: float = 60) -> None:
    """Create or replace the CRDs (a directory of YAML files, or the files), then wait
    until each is Established. The chart ships them as templates (crds.enabled); tests that
    install several releases apply them with this and set crds.enabled=false."""
    paths = sorted(crds.glob("*.yaml")) if isinstance(crds, Path) else list(crds)
    ext = client.ApiextensionsV1Api(api)
    for path in paths:
        body = yaml.safe_load(path.read_text("utf-8"))
        name = body["metadata"]["name"]
        # Another process of the run (the other real-node lane) may apply them at the
        # same moment: a conflict means read again and replace again.
        for attempt in range(1, CRD_APPLY_ATTEMPTS + 1):
            try:
                _create_or_replace_crd(ext, body)
                break
            except ApiException as exc:
                if exc.status != 409 or attempt == CRD_APPLY_ATTEMPTS:
                    raise

        def established(n: str = name) -> bool:
            crd = ext.read_custom_resource_definition(n)
            conds = (crd.status and crd.status.conditions) or []
            return any(c.type == "Established" and c.status == "True" for c in conds)

        wait_for(f"CRD {name} Established", established, timeout)


def secret_text(api: client.ApiClient, namespace: str, name: str, key: str) -> str | None:
    """One key of a Secret, decoded; None when the Secret or the key is not there (yet)."""
    try:
        secret = client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    raw = (secret.data or {}).get(key)
    return base64.b64decode(raw).decode() if raw else None
