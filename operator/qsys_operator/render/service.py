"""The `X-gateway` Service."""

from __future__ import annotations

from ..api import QSysCore
from ..kinds import SERVICE
from .common import (
    HTTP_PORT,
    METRICS_PORT,
    QRC_PORT,
    Manifest,
    child_metadata,
    gateway_name,
    selector_labels,
)

PORTS = (("http", HTTP_PORT), ("qrc", QRC_PORT), ("metrics", METRICS_PORT))


def render_service(core: QSysCore) -> Manifest:
    return {
        "apiVersion": SERVICE.api_version,
        "kind": SERVICE.kind,
        "metadata": child_metadata(core, gateway_name(core.metadata.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(core.metadata.name),
            "ports": [
                {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}
                for name, port in PORTS
            ],
        },
    }
