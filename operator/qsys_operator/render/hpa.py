"""The `X-gateway` HorizontalPodAutoscaler (only with spec.gateway.autoscaling)."""

from __future__ import annotations

from ..api import QSysCore
from .common import Manifest, child_metadata, gateway_name


def render_hpa(core: QSysCore) -> Manifest | None:
    scaling = core.spec.gateway.autoscaling
    if scaling is None:
        return None
    name = gateway_name(core.metadata.name)
    hpa: Manifest = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": child_metadata(core, name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": scaling.minReplicas,
            "maxReplicas": scaling.maxReplicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": scaling.targetCPUUtilizationPercentage,
                        },
                    },
                }
            ],
        },
    }
    if scaling.scaleDownStabilizationSeconds is not None:
        window = scaling.scaleDownStabilizationSeconds
        hpa["spec"]["behavior"] = {"scaleDown": {"stabilizationWindowSeconds": window}}
    return hpa
