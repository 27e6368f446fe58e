"""The real node of the local cluster: pods run in containerd under the kubelet, get
addresses from 198.18.0.0/16, reach each other and the apiserver through Services
(kube-proxy, 198.19.0.0/16) by DNS name (CoreDNS), and NetworkPolicies are
enforced (kube-router). Every address dialled is a pod's or a Service's.
"""

from __future__ import annotations

import itertools
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from kubernetes import client
from node_support import (
    NODE_LABEL,
    POD_CIDR_PREFIX,
    SERVICE_CIDR_PREFIX,
    create,
    deploy,
    images,
    real_namespace,
    real_node_names,
    require_real_node,
    restricted_container,
    run_pod,
    wait_pods_ready,
)

from qsys_testkit.cluster import Cluster, must, wait_for

pytestmark = [pytest.mark.node_lane("b"), pytest.mark.e2e, pytest.mark.usefixtures("real_node")]

SERVER = """
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from " + self.connection.getsockname()[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""

FETCH = """
import sys, urllib.request
try:
    with urllib.request.urlopen("{url}", timeout=5) as r:
        print(r.status, r.read().decode())
except Exception as exc:
    print("failed:", exc)
    sys.exit(3)
"""

KUBERNETES_API = """
import json, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
ctx = ssl.create_default_context(cafile=sa + "ca.crt")
req = urllib.request.Request(
    "https://kubernetes.default.svc.cluster.local/version",
    headers={"Authorization": "Bearer " + open(sa + "token").read()},
)
with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
    print(r.status, json.loads(r.read())["gitVersion"])
"""


@pytest.fixture
def image() -> str:
    return images()["gateway"]


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    with real_namespace(cluster) as name:
        yield name


def _server(cluster: Cluster, ns: str, image: str) -> client.V1Service:
    probe = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
    container = restricted_container(
        "echo",
        image,
        ["python3", "-c", SERVER],
        readinessProbe=probe,
        ports=[{"containerPort": 8080}],
    )
    deploy(cluster, ns, container, port=80)
    wait_pods_ready(cluster, ns, "app=echo", 1)
    return client.CoreV1Api(cluster.api).read_namespaced_service("echo", ns)


def _get(url: str) -> str:
    """GET url; retried while kube-proxy has not yet programmed a new Service (until
    then its ClusterIP answers with a reset, or not at all: no route to host)."""

    def fetch() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                assert r.status == 200
                return str(r.read().decode())
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, OSError):
                return None
            raise

    return wait_for(f"GET {url}", fetch, timeout=30)


@pytest.mark.local_cluster  # kwok's fake nodes beside the real one
def test_real_node_is_ready_beside_the_fake_ones(cluster: Cluster) -> None:
    node = require_real_node(cluster)
    info = must(must(node.status).node_info)
    assert info.kubelet_version == "v1.36.3"
    assert must(info.container_runtime_version).startswith("containerd://1.")
    assert (must(node.metadata).labels or {})[NODE_LABEL[0]] == NODE_LABEL[1]
    taints = [(t.key, t.value, t.effect) for t in must(node.spec).taints or []]
    assert (*NODE_LABEL, "NoSchedule") in taints
    addresses = {a.type: a.address for a in must(node.status).addresses or []}
    assert addresses["InternalIP"] == "198.18.0.1"
    names = [must(must(n.metadata).name) for n in client.CoreV1Api(cluster.api).list_node().items]
    assert any(n.startswith("kwok-node-") for n in names), names


def test_pods_reach_services_by_name_and_the_host_reaches_cluster_ips(
    cluster: Cluster, ns: str, image: str
) -> None:
    svc = _server(cluster, ns, image)
    cluster_ip = must(must(svc.spec).cluster_ip)
    assert cluster_ip.startswith(SERVICE_CIDR_PREFIX)
    pod = client.CoreV1Api(cluster.api).list_namespaced_pod(ns, label_selector="app=echo").items[0]
    pod_ip = must(must(pod.status).pod_ip)
    assert pod_ip.startswith(POD_CIDR_PREFIX)
    assert must(pod.spec).node_name in real_node_names(cluster)

    # From the host, through kube-proxy's rules.
    assert _get(f"http://{cluster_ip}/") == f"hello from {pod_ip}"
    # From another pod, by DNS name (CoreDNS) and ClusterIP.
    code, log = run_pod(
        cluster, ns, "client", image, FETCH.format(url=f"http://echo.{ns}.svc.cluster.local/")
    )
    assert code == 0, log
    assert f"200 hello from {pod_ip}" in log
    # The apiserver, through the `kubernetes` Service, with the pod's token.
    code, log = run_pod(cluster, ns, "apiclient", image, KUBERNETES_API)
    assert code == 0, log
    assert "200 v1.36.3" in log


def test_network_policy_admits_the_allowed_pod_and_refuses_another(
    cluster: Cluster, ns: str, image: str
) -> None:
    _server(cluster, ns, image)
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "echo-ingress"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "echo"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"access": "yes"}}}]}],
        },
    }
    create(cluster, ns, policy)
    url = f"http://echo.{ns}.svc.cluster.local/"

    # kube-router applies a policy within a second or so; the allowed pod proves it
    # is in force before the refused one is judged.
    attempts = itertools.count()

    def allowed() -> bool:
        name = f"allowed-{next(attempts)}"
        code, _ = run_pod(cluster, ns, name, image, FETCH.format(url=url), labels={"access": "yes"})
        return code == 0

    wait_for("the allowed pod admitted", allowed, timeout=120)
    code, log = run_pod(
        cluster, ns, "refused", image, FETCH.format(url=url), labels={"access": "no"}
    )
    assert code == 3, log
    assert "failed:" in log
    # The host (the node itself) is always admitted.
    svc = client.CoreV1Api(cluster.api).read_namespaced_service("echo", ns)
    assert _get(f"http://{must(svc.spec).cluster_ip}/").startswith("hello from ")
