"""Kopf handlers. They only trigger the reconciler; see reconcile.py."""

from __future__ import annotations

import kopf

from ..reconcile import Reconciler
from . import children, core, discovery, policy


def build_registry(reconciler: Reconciler) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    core.register(registry, reconciler)
    policy.register(registry, reconciler)
    children.register(registry, reconciler)
    discovery.register(registry, reconciler)
    return registry
