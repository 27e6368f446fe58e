"""`kubectl drain` of the real node against a gateway's PodDisruptionBudget: the chart's
operator, the Core simulator and a QSysCore with 2 gateway pods (test_real_gateway.py's
installation, in a namespace of its own). The drain cordons the one node and evicts
gateway pods of every namespace, so this file holds the node alone (node_exclusive).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from kubernetes import client
from node_support import NODE_SELECTOR, is_ready, tool, wait_pods_ready
from test_real_gateway import GATEWAY, GATEWAY_SELECTOR, TIMEOUT_S, Stack, installed_stack

from qsys_testkit.cluster import Cluster, must

pytestmark = [
    pytest.mark.node_exclusive,
    pytest.mark.e2e,
    pytest.mark.usefixtures("real_node"),
    pytest.mark.tools("helm"),
]


@pytest.fixture(scope="module")
def stack(cluster: Cluster) -> Iterator[Stack]:
    with installed_stack(cluster) as installed:
        yield installed


def test_drain_respects_the_pod_disruption_budget(stack: Stack) -> None:
    kubectl = tool("kube", "kubectl")
    pdb = client.PolicyV1Api(stack.cluster.api).read_namespaced_pod_disruption_budget(
        GATEWAY, stack.ns
    )
    assert must(pdb.spec).min_available is not None or must(pdb.spec).max_unavailable is not None
    result = subprocess.run(
        [
            str(kubectl),
            "drain",
            "--selector",
            NODE_SELECTOR,
            "--pod-selector",
            GATEWAY_SELECTOR,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=20s",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={**os.environ, "KUBECONFIG": stack.cluster.kubeconfig},
    )
    try:
        # One real node: an evicted gateway pod has nowhere to go, so the budget must
        # stop the drain before the last Ready gateway pod is evicted.
        assert result.returncode != 0, result.stdout + result.stderr
        assert "disruption budget" in result.stderr, result.stderr[-3000:]
        ready = [p for p in stack.gateway_pods() if is_ready(p)]
        assert ready, "the drain evicted every gateway pod"
    finally:
        subprocess.run(
            [str(kubectl), "uncordon", "--selector", NODE_SELECTOR],
            capture_output=True,
            timeout=60,
            check=True,
            env={**os.environ, "KUBECONFIG": stack.cluster.kubeconfig},
        )
    wait_pods_ready(stack.cluster, stack.ns, GATEWAY_SELECTOR, 2, timeout=TIMEOUT_S)
    assert stack.rpc("StatusGet")[0] == 200
