"""Events of the children (server-side filtered by the managed-by label): drift is corrected
by reconciling the owning core, which re-applies the declared state."""

from __future__ import annotations

from typing import Any

import kopf

from ..reconcile import Reconciler
from ..render.common import APP_NAME, MANAGED_BY

MANAGED_BY_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
TOKEN_APP = "qsys-gateway-token"  # noqa: S105 - a label value

# (group, version, plural) of every kind the operator creates.
CHILD_RESOURCES: list[tuple[str, str, str]] = [
    ("", "v1", "secrets"),
    ("", "v1", "services"),
    ("apps", "v1", "deployments"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("monitoring.coreos.com", "v1", "servicemonitors"),
]


def selector_key(group: str, version: str, plural: str) -> tuple[str, str] | tuple[str, str, str]:
    return (version, plural) if not group else (group, version, plural)


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    async def child_event(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
        app = labels.get("app.kubernetes.io/name")
        instance = labels.get("app.kubernetes.io/instance")
        if not instance or not namespace:
            return
        if app == APP_NAME:
            reconciler.trigger(namespace, instance)
        elif app == TOKEN_APP:
            await reconciler.token_secret_changed(namespace, instance)

    for group, version, plural in CHILD_RESOURCES:
        kopf.on.event(
            *selector_key(group, version, plural),
            labels={"app.kubernetes.io/managed-by": MANAGED_BY},
            registry=registry,
            id=f"child-{plural}",
        )(child_event)
