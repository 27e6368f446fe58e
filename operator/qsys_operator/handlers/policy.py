"""AccessPolicy events: re-render the referenced core (and the one a changed coreRef left)."""

from __future__ import annotations

from typing import Any

import kopf

from ..api import GROUP, VERSION, AccessPolicy
from ..reconcile import Reconciler


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    @kopf.on.event(GROUP, VERSION, AccessPolicy.PLURAL, registry=registry)
    async def policy_event(
        type: str, name: str, namespace: str | None, spec: kopf.Spec, meta: kopf.Meta, **_: Any
    ) -> None:
        if namespace is None:
            return
        core = (spec.get("coreRef") or {}).get("name")
        bound = None if type == "DELETED" else core
        reconciler.policy_seen(namespace, name, bound, meta.get("resourceVersion"))
        if type == "DELETED" and core:
            reconciler.trigger(namespace, core)
