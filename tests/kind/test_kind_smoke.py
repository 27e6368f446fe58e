"""kind smoke test (`make kind-smoke`, not part of `make test`): a kind cluster from the
node image built here (hack/kind_node.py) on this checkout's own Docker engine
(hack/kind/docker.sh), the image builder's tarballs loaded with `kind load
image-archive`, the chart installed with helm, the Core simulator as a pod, one
QSysCore Ready, one call allowed and one denied through the real gateway pods
(`kubectl qsys call`: apiserver -> kubelet -> port-forward), NetworkPolicy enforced by
the node network's kube-router (a deny policy cuts a live connection and its removal
restores it; the gateway's own policy lets it reach the Core and not the API server);
then `make kind-down`'s teardown must put the host back exactly as the snapshot before
`up` (hack/kind/docker.sh snapshot).

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
from typing import Any

import pytest
from kubernetes import client, config
from node_support import (
    NODE_SELECTOR,
    apply_example_policy,
    create,
    images,
    operator_release,
    real_namespace,
    restricted_container,
    run_pod,
    simulated_core,
    start_simulator,
    tool,
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
# Connects to argv[1]:argv[2] four times a second for ever: "N open" or "N closed ERROR".
PROBE = """
import socket, sys, time
for n in range(1, 10**6):
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
        print(n, "open", flush=True)
    except OSError as exc:
        print(n, "closed", exc, flush=True)
    time.sleep(0.25)
"""
# Run in a gateway pod: which of its peers it can open a connection to.
PEERS = """
import json, socket, sys
out = {}
for peer in sys.argv[1:]:
    host, port = peer.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        out[peer] = "open"
    except OSError as exc:
        out[peer] = f"closed {exc}"
print(json.dumps(out))
"""


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


# Resolves for up to 30 s: CoreDNS's pods being Ready does not mean that the worker's
# kube-proxy already routes the kube-dns Service to them (a cold run's first lookup once
# failed with EAI_AGAIN). Each failure goes to stderr, which is in the log.
DNS_PROBE = """
import socket, sys, time
deadline = time.monotonic() + 30
while True:
    try:
        a = socket.gethostbyname("kubernetes.default.svc.cluster.local")
        break
    except OSError as exc:
        print("lookup failed:", exc, file=sys.stderr, flush=True)
        if time.monotonic() > deadline:
            raise
        time.sleep(1)
socket.create_connection((a, 443), timeout=5).close()
print(a)
"""


def test_pods_reach_services_across_nodes(kind: Cluster) -> None:
    """DNS (CoreDNS, on either node) and the kubernetes Service from a pod on the worker."""
    with real_namespace(kind) as ns:
        code, log = run_pod(kind, ns, "probe", images()["gateway"], DNS_PROBE, timeout=120)
        assert code == 0, log
        assert log.strip().splitlines()[-1].startswith("198.19."), log


def _probe_states(kind: Cluster, ns: str, pod: str, after: int) -> list[tuple[int, str]]:
    log = client.CoreV1Api(kind.api).read_namespaced_pod_log(pod, ns, tail_lines=40)
    states = []
    for line in str(log).splitlines():
        n, _, state = line.partition(" ")
        if n.isdigit() and int(n) > after:
            states.append((int(n), state))
    return states


def _wait_probe(kind: Cluster, ns: str, pod: str, after: int, want: str) -> int:
    """Until the probe's last four attempts after attempt `after` all say `want`: the
    number of the last one."""

    def settled() -> int | None:
        last = _probe_states(kind, ns, pod, after)[-4:]
        if len(last) == 4 and all(state.startswith(want) for _, state in last):
            return last[-1][0]
        return None

    try:
        return wait_for(f"the probe's connections {want}", settled, timeout=60)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}: {_probe_states(kind, ns, pod, after)[-8:]}") from None


def _pod(name: str, container: dict[str, Any]) -> dict[str, Any]:
    """A pod of one container, killed at once on deletion (python as PID 1 ignores
    SIGTERM, which would cost the namespace's teardown the 30 s grace period)."""
    meta = {"name": name, "labels": {"app": name}}
    spec = {"containers": [container], "terminationGracePeriodSeconds": 0}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def test_network_policy_denies_a_live_connection_and_its_removal_restores_it(
    kind: Cluster,
) -> None:
    """kube-router of the node network enforces NetworkPolicy: one probe pod keeps
    connecting to a server pod while a deny-all ingress policy comes and goes."""
    networking = client.NetworkingV1Api(kind.api)
    image = images()["gateway"]
    with real_namespace(kind) as ns:
        server = restricted_container(
            "main",
            image,
            ["python3", "-m", "http.server", "8000", "--directory", "/tmp"],
            ports=[{"containerPort": 8000}],
            readinessProbe={"tcpSocket": {"port": 8000}, "periodSeconds": 1},
        )
        create(kind, ns, _pod("server", server))
        (ready,) = wait_pods_ready(kind, ns, "app=server", 1)
        address = must(must(ready.status).pod_ip)
        probe = restricted_container("main", image, ["python3", "-c", PROBE, address, "8000"])
        create(kind, ns, _pod("probe", probe))
        wait_pods_ready(kind, ns, "app=probe", 1)
        admitted = _wait_probe(kind, ns, "probe", 0, "open")
        deny = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "deny-server"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"]},
        }
        start = time.monotonic()
        create(kind, ns, deny)
        denied = _wait_probe(kind, ns, "probe", admitted, "closed")
        TIMINGS["policy in force"] = time.monotonic() - start
        start = time.monotonic()
        networking.delete_namespaced_network_policy("deny-server", ns)
        _wait_probe(kind, ns, "probe", denied, "open")
        TIMINGS["policy lifted"] = time.monotonic() - start


def _gateway_peers(kind: Cluster, ns: str, *peers: str) -> dict[str, str]:
    pod = wait_pods_ready(kind, ns, GATEWAY_SELECTOR, 2)[0]
    result = subprocess.run(
        [
            str(tool("kube", "kubectl")),
            "exec",
            "-n",
            ns,
            must(must(pod.metadata).name),
            "--",
            "python3",
            "-c",
            PEERS,
            *peers,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KUBECONFIG": kind.kubeconfig},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out: dict[str, str] = json.loads(result.stdout)
    return out


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
        # The gateway's NetworkPolicy (the operator renders it, on by default): out to the
        # Core's port and DNS only. Without it the pods of this cluster reach the API server
        # (test_pods_reach_services_across_nodes).
        core = client.CoreV1Api(kind.api)
        sim_ip = must(must(core.read_namespaced_service("core-sim", ns).spec).cluster_ip)
        api_ip = must(must(core.read_namespaced_service("kubernetes", "default").spec).cluster_ip)
        core_port, api = f"{sim_ip}:1710", f"{api_ip}:443"
        peers = _gateway_peers(kind, ns, core_port, api)
        assert peers[core_port] == "open", peers
        assert peers[api].startswith("closed"), peers


def test_teardown_restores_the_host(kind: Cluster, host_before: str) -> None:
    during = _script(DOCKER_SH, "snapshot")
    for marker in ("qkind0", "dockerd", "/var/lib/qsys-kind", "unreachable 198.18.0.0/15"):
        assert marker in during, f"{marker} missing from the host state while kind runs"
    _script(CLUSTER_SH, "down")
    after = _script(DOCKER_SH, "snapshot")
    diff = difflib.unified_diff(
        host_before.splitlines(), after.splitlines(), "before", "after", lineterm=""
    )
    assert after == host_before, "\n".join(diff)
