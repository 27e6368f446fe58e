"""The ServiceMonitor CRD: created or removed at any time; the cores follow."""

from __future__ import annotations

from typing import Any

import kopf

from ..kinds import SERVICE_MONITOR
from ..reconcile import Reconciler


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    @kopf.on.event(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        field="metadata.name",
        value=SERVICE_MONITOR.crd_name,
        registry=registry,
    )
    async def service_monitor_crd(**_: Any) -> None:
        reconciler.service_monitor_crd_changed()
