"""The `X-gateway` PodDisruptionBudget (only when the gateway keeps more than one replica:
`replicas`, or `autoscaling.minReplicas`)."""

from __future__ import annotations

from ..api import QSysCore
from ..kinds import PDB
from .common import Manifest, child_metadata, gateway_name, selector_labels


def render_pdb(core: QSysCore) -> Manifest | None:
    if core.spec.gateway.min_replicas <= 1:
        return None  # a PDB on one replica would block node drains forever
    return {
        "apiVersion": PDB.api_version,
        "kind": PDB.kind,
        "metadata": child_metadata(core, gateway_name(core.metadata.name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(core.metadata.name)},
        },
    }
