"""Events of the children (server-side filtered by the managed-by label): drift is corrected
by reconciling the owning core, which re-applies the declared state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import kopf

from ..kinds import CHILDREN, Kind
from ..reconcile import Reconciler
from ..render.common import APP_NAME, MANAGED_BY
from ..render.identity import CORE_NAMESPACE_LABEL

MANAGED_BY_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
TOKEN_APP = "qsys-gateway-token"  # noqa: S105 - a label value


def owner_of(
    namespace: str | None, labels: Mapping[str, str], watched: Collection[str]
) -> tuple[str, str, str | None] | None:
    """(namespace, instance, app) of the resource a child belongs to, or None to ignore it.

    A cluster-scoped child (ClusterRoleBinding) names its core's namespace in a label;
    Kopf watches those cluster-wide, so the cores of namespaces not watched are skipped."""
    instance = labels.get("app.kubernetes.io/instance")
    namespace = namespace or labels.get(CORE_NAMESPACE_LABEL)
    if not instance or not namespace or (watched and namespace not in watched):
        return None
    return namespace, instance, labels.get("app.kubernetes.io/name")


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    watched = frozenset(reconciler.settings.watch_namespaces)

    def handler(kind: Kind) -> Callable[..., Awaitable[None]]:
        async def child_event(
            type: str | None,
            name: str,
            namespace: str | None,
            labels: kopf.Labels,
            meta: kopf.Meta,
            body: kopf.Body,
            **_: Any,
        ) -> None:
            if not reconciler.child_seen(kind, namespace, name, meta, type == "DELETED", body):
                return
            owner = owner_of(namespace, labels, watched)
            if owner is None:
                return
            namespace, instance, app = owner
            if app == APP_NAME:
                reconciler.trigger(namespace, instance)
            elif app == TOKEN_APP:
                await reconciler.token_secret_changed(namespace, instance)

        return child_event

    for kind in CHILDREN:
        kopf.on.event(
            *kind.resource,
            labels={"app.kubernetes.io/managed-by": MANAGED_BY},
            registry=registry,
            id=f"child-{kind.plural}",
        )(handler(kind))
