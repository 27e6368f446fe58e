"""kind smoke test (`make kind-smoke`, not part of `make test`): a kind cluster from the
node image built here (hack/kind_node.py) on this checkout's own Docker engine
(hack/kind/docker.sh), the image builder's tarballs loaded with `kind load
image-archive`, the chart installed with helm, the Core simulator as a pod, one
QSysCore Ready, one call allowed and one denied through the real gateway pods
(`kubectl qsys call`: apiserver -> kubelet -> port-forward); then `make kind-down`'s
teardown must put the host back exactly as the snapshot before `up`
(hack/kind/docker.sh snapshot).

The tests run in file order on one cluster (module scope); the last one takes it down.
Machine-wide like the local cluster: run under `flock /tmp/qsys-cluster.lock`.
"""

from __future__ import annotations

import difflib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from node_support import (
    NODE_SELECTOR,
    apply_example_policy,
    images,
    operator_release,
    real_namespace,
    run_pod,
    simulated_core,
    start_simulator,
    wait_pods_ready,
)
from operator_support import wait_condition
from plugin_support import Plugin

from qsys_testkit.checkout import REPO
from qsys_testkit.cluster import Cluster, must, wait_for

pytestmark = [pytest.mark.kind, pytest.mark.timeout(1500)]

CLUSTER_SH = REPO / "hack" / "kind" / "cluster.sh"
DOCKER_SH = REPO / "hack" / "kind" / "docker.sh"
KUBECONFIG = REPO / ".cache" / "kind" / "kubeconfig"
CORE = "auditorium"
GATEWAY_SELECTOR = f"app.kubernetes.io/instance={CORE},app.kubernetes.io/name=qsys-gateway"
GAIN = {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain"}]}
PANEL_TOKEN = secrets.token_hex(32)
TIMINGS: dict[str, float] = {}


def _script(path: Path, *args: str, timeout: float = 900) -> str:
    start = time.monotonic()
    result = subprocess.run(
        ["bash", str(path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHON": os.environ.get("PYTHON", "python3")},
    )
    TIMINGS[f"{path.name} {' '.join(args)}"] = time.monotonic() - start
    assert result.returncode == 0, f"{path.name} {args} failed:\n{result.stderr[-6000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def host_before() -> str:
    return _script(DOCKER_SH, "snapshot")


@pytest.fixture(scope="module")
def kind(host_before: str) -> Iterator[Cluster]:
    try:
        _script(CLUSTER_SH, "up")
        _script(CLUSTER_SH, "load")
        api = config.new_client_from_config(config_file=str(KUBECONFIG))  # type: ignore[no-untyped-call]
        yield Cluster(kubeconfig=str(KUBECONFIG), api=api, local=False)
        api.close()
    finally:
        # Also when a test failed: nothing of Docker or kind outlives the module.
        _script(CLUSTER_SH, "down")
        print("kind smoke timings (s):", json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))


def test_cluster_runs_on_the_node_image_built_here(kind: Cluster) -> None:
    core = client.CoreV1Api(kind.api)

    def ready_nodes() -> list[client.V1Node] | None:
        nodes = core.list_node().items
        ready = [
            n
            for n in nodes
            for c in must(n.status).conditions or []
            if c.type == "Ready" and c.status == "True"
        ]
        return nodes if len(nodes) == len(ready) == 2 else None

    for node in wait_for("both nodes Ready", ready_nodes):
        info = must(must(node.status).node_info)
        assert info.kubelet_version == "v1.36.3"
        assert info.container_runtime_version.startswith("containerd://1.6."), info
        assert must(must(node.spec).pod_cidr).startswith("198.18."), node.spec
    workers = core.list_node(label_selector=NODE_SELECTOR).items
    assert [must(w.metadata).name for w in workers] == ["qsys-e2e-worker"]
    apps = client.AppsV1Api(kind.api)

    def network_and_dns_ready() -> bool:
        network = apps.read_namespaced_daemon_set("qsys-kind-network", "kube-system")
        dns = apps.read_namespaced_deployment("coredns", "kube-system")
        return must(network.status).number_ready == 2 and must(dns.status).ready_replicas == 2

    wait_for("the node network on both nodes and CoreDNS ready", network_and_dns_ready)


def test_pods_reach_services_across_nodes(kind: Cluster) -> None:
    """DNS (CoreDNS, on either node) and the kubernetes Service from a pod on the worker."""
    with real_namespace(kind) as ns:
        script = (
            "import socket; "
            "a = socket.gethostbyname('kubernetes.default.svc.cluster.local'); "
            "socket.create_connection((a, 443), timeout=5).close(); print(a)"
        )
        code, log = run_pod(kind, ns, "probe", images()["gateway"], script)
        assert code == 0, log
        assert log.strip().startswith("198.19."), log


def test_chart_core_ready_and_calls_through_a_real_gateway_pod(kind: Cluster) -> None:
    custom = client.CustomObjectsApi(kind.api)
    with real_namespace(kind) as ns, operator_release(kind, ns):
        start_simulator(kind, ns)
        custom.create_namespaced_custom_object(
            "qsys.dev", "v1alpha1", ns, "qsyscores", simulated_core(CORE)
        )
        apply_example_policy(kind, ns, PANEL_TOKEN)
        wait_pods_ready(kind, ns, GATEWAY_SELECTOR, 2, timeout=240)
        wait_condition(kind, ns, "QSysCore", CORE, "Ready", "True", timeout=180)
        qsys = Plugin(kind, ns)
        allowed = qsys(
            "call", CORE, "Component.Get", json.dumps(GAIN), "--as", "ai-agent", timeout=90
        )
        assert allowed.returncode == 0, allowed.stderr
        assert json.loads(allowed.stdout)["result"]["Controls"][0]["Name"] == "gain"
        loud = {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain", "Value": 5}]}
        denied = qsys("call", CORE, "Component.Set", json.dumps(loud), "--as", "room-101-panel")
        assert denied.returncode == 1, denied.stderr
        assert json.loads(denied.stdout)["error"]["code"] == -32003


def test_teardown_restores_the_host(kind: Cluster, host_before: str) -> None:
    during = _script(DOCKER_SH, "snapshot")
    for marker in ("qkind0", "dockerd", "/var/lib/qsys-kind"):
        assert marker in during, f"{marker} missing from the host state while kind runs"
    _script(CLUSTER_SH, "down")
    after = _script(DOCKER_SH, "snapshot")
    diff = difflib.unified_diff(
        host_before.splitlines(), after.splitlines(), "before", "after", lineterm=""
    )
    assert after == host_before, "\n".join(diff)
