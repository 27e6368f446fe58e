"""The `X-gateway` ServiceMonitor (Prometheus Operator), rendered apart from the other children:
the caller applies it only when the cluster serves monitoring.coreos.com/v1."""

from __future__ import annotations

from ..api import QSysCore
from ..kinds import SERVICE_MONITOR
from ..settings import OperatorSettings
from .common import Manifest, child_metadata, gateway_name, selector_labels


def render_service_monitor(core: QSysCore, settings: OperatorSettings) -> Manifest | None:
    """Labels: the operator-wide monitoring_labels, then the core's own, then the
    operator's (which select the children and cannot be overridden)."""
    sm = core.spec.monitoring.serviceMonitor
    if not sm.enabled:
        return None
    meta = child_metadata(core, gateway_name(core.metadata.name))
    extra = {**settings.monitoring_labels, **sm.labels}
    meta["labels"] = {**dict(sorted(extra.items())), **meta["labels"]}
    return {
        "apiVersion": SERVICE_MONITOR.api_version,
        "kind": SERVICE_MONITOR.kind,
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": selector_labels(core.metadata.name)},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": sm.interval}],
        },
    }
