"""Liveness: Kopf serves the endpoint; this adds the operator's own facts to its answer."""

from __future__ import annotations

from typing import Any

import kopf

from .reconcile import Reconciler


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    @kopf.on.probe(id="managedCores", registry=registry)
    def managed_cores(**_: Any) -> int:
        return reconciler.managed_cores
