"""spec.gateway.autoscaling on the real control plane: the operator creates and removes the
HorizontalPodAutoscaler, hands the Deployment's replicas over to it without a reset, leaves
the HPA's choices alone, and the real HPA controller (kube-controller-manager) enforces the
minimum. CPU-driven scale-out needs metrics-server on a real node (not part of this test)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from operator_support import Operator, core_body, create, patch, running_operator
from test_operator import _get

from qsys_testkit.checkout import REPO
from qsys_testkit.cluster import Cluster, must, wait_for
from qsys_testkit.kube import apply_crds

pytestmark = pytest.mark.e2e

NAME = "hall-gateway"


@pytest.fixture
def operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[Operator]:
    apply_crds(cluster.api, REPO / "crds")
    with running_operator(cluster, namespace, tmp_path / "operator.log") as op:
        yield op


def _replicas_managers(dep: client.V1Deployment) -> set[str]:
    return {
        str(entry.manager)
        for entry in must(dep.metadata).managed_fields or []
        if "f:replicas" in ((entry.fields_v1 or {}).get("f:spec") or {})
    }


def test_hpa_lifecycle_and_replicas_ownership(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    ns = namespace
    apps = client.AppsV1Api(cluster.api)
    hpas = client.AutoscalingV2Api(cluster.api)
    pdbs = client.PolicyV1Api(cluster.api)
    create(cluster, ns, core_body("hall", 1710, replicas=3))

    def replicas() -> int | None:
        dep = _get(apps.read_namespaced_deployment, NAME, ns)
        return None if dep is None else int(dep.spec.replicas)

    wait_for("Deployment with 3 replicas", lambda: replicas() == 3)
    assert _get(hpas.read_namespaced_horizontal_pod_autoscaler, NAME, ns) is None

    # Autoscaling on: an HPA appears; replicas stay at 3 (no reset to 1) and the operator
    # no longer applies them.
    patch(
        cluster,
        ns,
        "QSysCore",
        "hall",
        {"spec": {"gateway": {"autoscaling": {"minReplicas": 2, "maxReplicas": 4}}}},
    )
    hpa = wait_for(
        "HPA", lambda: _get(hpas.read_namespaced_horizontal_pod_autoscaler, NAME, ns), 60
    )
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (2, 4)
    assert hpa.spec.scale_target_ref.name == NAME
    assert hpa.spec.metrics[0].resource.target.average_utilization == 70
    assert hpa.metadata.owner_references[0].kind == "QSysCore"

    def released() -> client.V1Deployment | None:
        dep = apps.read_namespaced_deployment(NAME, ns)
        return dep if "qsys-operator" not in _replicas_managers(dep) else None

    dep = wait_for("operator released spec.replicas", released, 60)
    assert dep.spec.replicas == 3

    # The HPA's (or anyone's) replica count is no longer drift the operator reverts.
    apps.patch_namespaced_deployment_scale(NAME, ns, {"spec": {"replicas": 4}})
    time.sleep(3)  # several operator resyncs
    assert replicas() == 4

    # A higher minimum: the real HPA controller scales the Deployment up to it; the PDB stays.
    patch(
        cluster,
        ns,
        "QSysCore",
        "hall",
        {"spec": {"gateway": {"autoscaling": {"minReplicas": 5, "maxReplicas": 6}}}},
    )
    wait_for(
        "HPA controller scales to minReplicas 5",
        lambda: replicas() == 5,
        90,
    )
    assert _get(pdbs.read_namespaced_pod_disruption_budget, NAME, ns) is not None

    # Autoscaling off with replicas 1: HPA and PDB removed, the operator owns replicas again.
    patch(
        cluster,
        ns,
        "QSysCore",
        "hall",
        {"spec": {"gateway": {"replicas": 1, "autoscaling": None}}},
    )
    wait_for(
        "HPA removed",
        lambda: _get(hpas.read_namespaced_horizontal_pod_autoscaler, NAME, ns) is None,
        60,
    )
    wait_for(
        "replicas back to 1",
        lambda: replicas() == 1,
        60,
    )
    assert "qsys-operator" in _replicas_managers(apps.read_namespaced_deployment(NAME, ns))
    wait_for(
        "PDB removed",
        lambda: _get(pdbs.read_namespaced_pod_disruption_budget, NAME, ns) is None,
        60,
    )
