"""spec.gateway.autoscaling: the HPA child, the Deployment leaving replicas to it, the PDB
following the minimum, the CRD/model rejecting min > max, and the replicas handover check."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from test_render import by_kind, make_core, render

from qsys_operator.k8s import FIELD_MANAGER, HANDOVER_MANAGER, applies_replicas
from qsys_operator.kinds import HPA
from qsys_operator.render import ChildRef

HPA_REF = ChildRef(HPA, "hall-gateway")


def scaled(**autoscaling: Any) -> dict[str, Any]:
    return by_kind(render(make_core(gateway={"replicas": 3, "autoscaling": autoscaling})))


def test_hpa_rendered_with_the_spec_values() -> None:
    hpa = scaled(minReplicas=2, maxReplicas=6, targetCPUUtilizationPercentage=60)[
        "HorizontalPodAutoscaler"
    ]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["metadata"]["name"] == "hall-gateway"
    assert hpa["metadata"]["ownerReferences"][0]["kind"] == "QSysCore"
    assert hpa["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "hall-gateway"},
        "minReplicas": 2,
        "maxReplicas": 6,
        "metrics": [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 60},
                },
            }
        ],
    }


def test_defaults_and_no_hpa_without_autoscaling() -> None:
    hpa = scaled()["HorizontalPodAutoscaler"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    plain = render(make_core(gateway={"replicas": 3}))
    assert "HorizontalPodAutoscaler" not in by_kind(plain)
    assert HPA_REF in plain.absent
    assert by_kind(plain)["Deployment"]["spec"]["replicas"] == 3


def test_scale_down_stabilization_goes_into_behavior() -> None:
    assert "behavior" not in scaled()["HorizontalPodAutoscaler"]["spec"]
    for seconds in (0, 30, 3600):
        spec = scaled(scaleDownStabilizationSeconds=seconds)["HorizontalPodAutoscaler"]["spec"]
        assert spec["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": seconds}}
    for bad in (-1, 3601):
        with pytest.raises(ValidationError):
            make_core(gateway={"autoscaling": {"scaleDownStabilizationSeconds": bad}})


def test_deployment_leaves_replicas_to_the_hpa() -> None:
    deployment = scaled(minReplicas=2, maxReplicas=4)["Deployment"]
    assert "replicas" not in deployment["spec"]
    # The gateway container keeps a CPU request: the HPA's utilisation is relative to it.
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"]


@pytest.mark.parametrize(("minimum", "pdb"), [(1, False), (2, True)])
def test_pdb_follows_the_minimum(minimum: int, pdb: bool) -> None:
    # replicas: 3 alone would want a PDB; with autoscaling only minReplicas counts.
    children = scaled(minReplicas=minimum, maxReplicas=5)
    assert ("PodDisruptionBudget" in children) is pdb


def test_min_above_max_is_refused() -> None:
    with pytest.raises(ValidationError, match="minReplicas must not exceed maxReplicas"):
        make_core(gateway={"autoscaling": {"minReplicas": 5, "maxReplicas": 2}})
    with pytest.raises(ValidationError):
        make_core(gateway={"autoscaling": {"targetCPUUtilizationPercentage": 0}})


def managed(manager: str, operation: str, spec_fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "manager": manager,
        "operation": operation,
        "fieldsV1": {"f:spec": spec_fields, "f:metadata": {}},
    }


def test_applies_replicas_reads_managed_fields() -> None:
    owned = {"metadata": {"managedFields": [managed(FIELD_MANAGER, "Apply", {"f:replicas": {}})]}}
    assert applies_replicas(owned)
    by_hpa = {
        "metadata": {
            "managedFields": [
                managed(FIELD_MANAGER, "Apply", {"f:template": {}}),
                managed("kube-controller-manager", "Update", {"f:replicas": {}}),
                managed(HANDOVER_MANAGER, "Apply", {"f:replicas": {}}),
            ]
        }
    }
    assert not applies_replicas(by_hpa)
    assert applies_replicas(by_hpa, HANDOVER_MANAGER)
    assert not applies_replicas({"metadata": {}})
