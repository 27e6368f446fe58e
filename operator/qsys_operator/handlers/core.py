"""QSysCore events: any change of a core (or its disappearance) reconciles it."""

from __future__ import annotations

from typing import Any

import kopf

from ..api import GROUP, VERSION, QSysCore
from ..reconcile import Reconciler


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    @kopf.on.event(GROUP, VERSION, QSysCore.PLURAL, registry=registry)
    async def core_event(
        type: str, name: str, namespace: str | None, meta: kopf.Meta, **_: Any
    ) -> None:
        if namespace is None:
            return
        if type == "DELETED":
            reconciler.core_deleted(namespace, name)
        else:
            reconciler.core_seen(namespace, name, meta.get("resourceVersion"))
