"""Helpers shared by unit tests: the hack/ scripts as modules, and a Secret as the
Kubernetes client returns it, built from a stored manifest (for the fake API clients)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client

from qsys_testkit.checkout import hack_script

REPO = Path(__file__).resolve().parents[2]

__all__ = ["REPO", "hack_script", "secret_of"]


def secret_of(body: dict[str, Any], namespace: str) -> client.V1Secret:
    """The V1Secret read_namespaced_secret would return for the stored manifest body."""
    meta = body["metadata"]
    refs = [
        client.V1OwnerReference(
            api_version=r["apiVersion"],
            kind=r["kind"],
            name=r["name"],
            uid=r["uid"],
            controller=r.get("controller"),
        )
        for r in meta.get("ownerReferences") or []
    ]
    return client.V1Secret(
        metadata=client.V1ObjectMeta(
            name=meta["name"],
            namespace=namespace,
            annotations=meta.get("annotations"),
            owner_references=refs or None,
            resource_version=meta.get("resourceVersion"),
        ),
        data=body.get("data"),
    )
