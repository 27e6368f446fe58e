"""Helpers for e2e tests on the real node (hack/cluster/node.sh): namespaces whose
pods land there, the images `make images` built, run-to-completion client pods.

Real pods run only on nodes labelled `qsys.io/node=real` (REAL_NODE_LABEL): the local
cluster's real node (also tainted, so that nothing else lands there) or kind's worker
(kind-config.yaml). Tests select such nodes by that label, never by name; kwok's fake
nodes carry no label and keep everything else. A namespace made by `real_namespace`
carries the PodNodeSelector and PodTolerationRestriction annotations, so every pod in
it, including the ones Deployments render, goes to a real node without a change to the
objects themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, utils

from qsys_testkit.checkout import REPO, image_names, pinned_tool
from qsys_testkit.cluster import Cluster, must, wait_for, wait_gone
from qsys_testkit.kube import (
    REAL_NODE_ANNOTATIONS,
    REAL_NODE_LABEL,
    RESTRICTED_SECURITY_CONTEXT,
    apply_crds,
)

CONTAINERD_SOCK = REPO / ".cache" / "cluster" / "node" / "containerd" / "containerd.sock"
NODE_LABEL = REAL_NODE_LABEL
POD_CIDR_PREFIX = "198.18."
SERVICE_CIDR_PREFIX = "198.19."


CHART = REPO / "charts" / "qsys-operator"
CHART_TIMEOUT_S = 180

images = image_names


NODE_SELECTOR = "=".join(NODE_LABEL)
"""The label selector of the nodes where pods really run."""


def real_nodes(cluster: Cluster) -> list[client.V1Node]:
    """The nodes labelled as running real pods (NODE_SELECTOR), Ready or not, by name."""
    nodes = client.CoreV1Api(cluster.api).list_node(label_selector=NODE_SELECTOR).items
    return sorted(nodes, key=lambda n: str(must(n.metadata).name))


def real_node_names(cluster: Cluster) -> set[str]:
    return {must(must(n.metadata).name) for n in real_nodes(cluster)}


def require_real_node(cluster: Cluster) -> client.V1Node:
    """A node where pods really run (labelled NODE_SELECTOR), Ready; the first by name when
    there are several. A failure (never a skip) when the cluster has none or none is Ready."""
    nodes = real_nodes(cluster)
    if not nodes:
        pytest.fail(
            f"the cluster has no node labelled {NODE_SELECTOR}: a test on real pods requests "
            "the `real_node` fixture, which starts the local one (not with QSYS_REAL_NODE=0; "
            "it needs root); kind's worker gets the label from kind-config.yaml",
            pytrace=False,
        )
    for node in nodes:
        ready = [c.status for c in must(node.status).conditions or [] if c.type == "Ready"]
        if ready == ["True"]:
            return node
    names = [must(n.metadata).name for n in nodes]
    pytest.fail(f"no node labelled {NODE_SELECTOR} is Ready: {names}", pytrace=False)


@contextmanager
def real_namespace(cluster: Cluster, name: str = "") -> Iterator[str]:
    """A fresh namespace (named `name`, else e2e-real-RANDOM) whose pods run on the real
    node; deleted afterwards, waiting until its pods are gone so that no container outlives
    the test. Its pods get one second between SIGTERM and SIGKILL: a container whose first
    process ignores SIGTERM (a test's sleeper, PID 1 without a handler) would otherwise hold
    the namespace for the default 30 s."""
    require_real_node(cluster)
    core = client.CoreV1Api(cluster.api)
    name = name or f"e2e-real-{uuid.uuid4().hex[:8]}"
    meta = client.V1ObjectMeta(name=name, annotations=REAL_NODE_ANNOTATIONS)
    core.create_namespace(client.V1Namespace(metadata=meta))
    try:
        yield name
    finally:
        core.delete_namespace(name, grace_period_seconds=0)
        core.delete_collection_namespaced_pod(name, grace_period_seconds=1)
        wait_gone(f"namespace {name}", lambda: core.read_namespace(name), timeout=120)


def create(cluster: Cluster, ns: str, body: dict[str, Any]) -> None:
    """Create any object from its manifest in namespace ns."""
    utils.create_from_dict(cluster.api, body, namespace=ns)  # type: ignore[no-untyped-call]


def is_ready(pod: client.V1Pod) -> bool:
    conditions = must(pod.status).conditions or []
    return must(pod.metadata).deletion_timestamp is None and any(
        c.type == "Ready" and c.status == "True" for c in conditions
    )


def deploy(
    cluster: Cluster, ns: str, container: dict[str, Any], replicas: int = 1, port: int = 0
) -> None:
    """A Deployment of container named after it (pods labelled app=NAME), and a Service
    of the same name in front of it when port is set."""
    name = container["name"]
    labels = {"app": name}
    template = {"metadata": {"labels": labels}, "spec": {"containers": [container]}}
    spec = {"replicas": replicas, "selector": {"matchLabels": labels}, "template": template}
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}
    create(cluster, ns, body)
    if port:
        ports = [
            {"name": "main", "port": port, "targetPort": container["ports"][0]["containerPort"]}
        ]
        service = {"selector": labels, "ports": ports}
        create(
            cluster,
            ns,
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": service},
        )


def restricted_container(name: str, image: str, command: list[str], **extra: Any) -> dict[str, Any]:
    """A container under the restricted Pod Security profile (as the gateway runs)."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "Never",
        "command": command,
        "securityContext": dict(RESTRICTED_SECURITY_CONTEXT),
        **extra,
    }


def run_pod(
    cluster: Cluster,
    ns: str,
    name: str,
    image: str,
    script: str,
    labels: dict[str, str] | None = None,
    timeout: float = 90,
) -> tuple[int, str]:
    """Run `python3 -c script` in a pod to completion: (exit code, log)."""
    core = client.CoreV1Api(cluster.api)
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": True,
            "containers": [restricted_container("main", image, ["python3", "-c", script])],
        },
    }
    create(cluster, ns, body)

    def finished() -> client.V1ContainerStateTerminated | None:
        pod = core.read_namespaced_pod(name, ns)
        for status in must(pod.status).container_statuses or []:
            if status.state and status.state.terminated:
                return status.state.terminated
        return None

    term = wait_for(f"pod {name} finished", finished, timeout=timeout)
    log = core.read_namespaced_pod_log(name, ns)
    return int(term.exit_code), str(log)


def wait_pods_ready(
    cluster: Cluster, ns: str, selector: str, count: int, timeout: float = 120
) -> list[client.V1Pod]:
    core = client.CoreV1Api(cluster.api)

    def ready() -> list[client.V1Pod] | None:
        pods = core.list_namespaced_pod(ns, label_selector=selector).items
        good = [p for p in pods if is_ready(p)]
        return good if len(good) == count else None

    try:
        return wait_for(f"{count} Ready pods {selector} in {ns}", ready, timeout=timeout)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{pods_report(cluster, ns, selector)}") from None


def pods_report(cluster: Cluster, ns: str, selector: str) -> str:
    """Why pods are not Ready: phase, conditions and container states of each, and the
    namespace's recent Warning events (a timeout message that says only "None" hides
    an image missing from the node or an unschedulable pod)."""
    core = client.CoreV1Api(cluster.api)
    lines = []
    for pod in core.list_namespaced_pod(ns, label_selector=selector).items:
        status = must(pod.status)
        conds = [f"{c.type}={c.status}:{c.reason or ''}" for c in status.conditions or []]
        lines.append(f"pod {must(pod.metadata).name} {status.phase} {' '.join(conds)}")
        for cs in status.container_statuses or []:
            waiting = cs.state.waiting if cs.state else None
            if waiting is not None:
                lines.append(f"  {cs.name} waiting {waiting.reason}: {waiting.message}")
    for event in core.list_namespaced_event(ns).items[-20:]:
        if event.type == "Warning":
            obj = event.involved_object
            lines.append(f"event {obj.kind}/{obj.name} {event.reason}: {event.message}")
    return "\n".join(lines) or f"no pod matches {selector}"


def elapsed_since(start: float) -> float:
    return time.monotonic() - start


def tool(group: str, name: str) -> Path:
    try:
        return pinned_tool(group, name)
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(tool("helm", "helm")), *args],
        capture_output=True,
        text=True,
        timeout=CHART_TIMEOUT_S + 30,
        check=False,
        env={**os.environ, "KUBECONFIG": cluster.kubeconfig},
    )
    if check:
        assert result.returncode == 0, f"helm {args} exited {result.returncode}:\n{result.stderr}"
    return result


def host_call(
    cluster: Cluster, ns: str, service: str, token: str, method: str, params: Any = None
) -> int:
    """One JSON-RPC call from the host to a gateway Service's ClusterIP (the node's own
    traffic passes the NetworkPolicy): the HTTP status, 0 when nothing answered."""
    svc = client.CoreV1Api(cluster.api).read_namespaced_service(service, ns)
    return rpc_status(must(must(svc.spec).cluster_ip), token, method, params)


def rpc_status(address: str, token: str, method: str, params: Any = None) -> int:
    """One JSON-RPC call to a gateway's /v1/rpc at address (a ClusterIP or a pod's IP):
    the HTTP status, 0 when nothing answered."""
    url = f"http://{address}:8080/v1/rpc"
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}})
    req = urllib.request.Request(
        url,
        data=body.encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def chart_values(refs: dict[str, str], ns: str) -> list[str]:
    """The chart values (--set) of an operator watching ns only, on the real node, with
    the images refs (component -> reference, already on the node)."""
    op_repo, _, op_tag = refs["operator"].rpartition(":")
    gw_repo, _, gw_tag = refs["gateway"].rpartition(":")
    return [
        f"image.repository={op_repo}",
        f"image.tag={op_tag}",
        "image.pullPolicy=Never",
        f"gatewayImage.repository={gw_repo}",
        f"gatewayImage.tag={gw_tag}",
        "gatewayImage.pullPolicy=Never",
        f"watchNamespaces={{{ns}}}",
        "resyncSeconds=2",
        "serviceMonitor.enabled=false",
        "prometheusRule.enabled=false",
        "gatewayProbe.cidrs={198.18.0.0/16}",
    ]


@contextmanager
def operator_release(cluster: Cluster, ns: str, extra: Sequence[str] = ()) -> Iterator[str]:
    """The operator installed into ns by the Helm chart (watching ns only), with the images
    `make images` built and the chart values `extra` (--set, after the defaults here): the
    release name; uninstalled afterwards."""
    apply_crds(cluster.api, REPO / "crds")
    release = f"qsys-{ns.rsplit('-', 1)[1]}"
    # The CRDs are applied above: other tests' releases share them.
    values = [*chart_values(images(), ns), "crds.enabled=false"]
    args = ["install", release, str(CHART), "--namespace", ns, "--wait"]
    args += ["--timeout", f"{CHART_TIMEOUT_S}s"]
    for value in (*values, *extra):
        args += ["--set", value]
    helm(cluster, *args)
    try:
        yield release
    finally:
        uninstall = ["uninstall", release, "--namespace", ns, "--wait", "--timeout", "60s"]
        helm(cluster, *uninstall, check=False)


def start_simulator(cluster: Cluster, ns: str) -> None:
    """The Core simulator as a pod behind the Service `core-sim` (QRC on port 1710)."""
    container = restricted_container(
        "core-sim",
        images()["core-sim"],
        ["qsys-core-sim", "--host", "0.0.0.0", "--port", "1710"],
        ports=[{"containerPort": 1710, "name": "qrc"}],
        readinessProbe={"tcpSocket": {"port": 1710}, "periodSeconds": 1},
    )
    deploy(cluster, ns, container, port=1710)
    wait_pods_ready(cluster, ns, "app=core-sim", 1)


def example(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((REPO / "examples" / name).read_text("utf-8"))
    return body


def simulated_core(name: str, gateway: dict[str, Any] | None = None) -> dict[str, Any]:
    """The example QSysCore named name, pointing at the simulator pod (start_simulator),
    without a ServiceMonitor; gateway replaces its spec.gateway when given."""
    body = example("qsyscore.yaml")
    body["metadata"]["name"] = name
    body["spec"]["core"] = {"host": "core-sim", "port": 1710}
    # The Core is a pod: its address (after the Service's DNAT) is in the pod range.
    body["spec"]["networkPolicy"] = {"coreCIDRs": ["198.18.0.0/16"]}
    body["spec"]["monitoring"] = {"serviceMonitor": {"enabled": False}}
    if gateway is not None:
        body["spec"]["gateway"] = gateway
    return body


def wait_answering(what: str, call: Callable[[], bool], streak: int = 10) -> None:
    """Until call() succeeds streak times in a row (an OSError counts as a failure):
    kube-proxy and kube-router program new pods a moment after they are Ready; until
    then a connection may be refused."""
    run = [0]

    def steady() -> bool:
        try:
            ok = call()
        except OSError:
            ok = False
        run[0] = run[0] + 1 if ok else 0
        time.sleep(0.1)
        return run[0] >= streak

    wait_for(f"{what} answering steadily", steady, timeout=60)


def apply_example_policy(cluster: Cluster, ns: str, panel_token: str) -> None:
    """examples/accesspolicy.yaml and the room panel's token Secret it refers to."""
    client.CoreV1Api(cluster.api).create_namespaced_secret(
        ns,
        client.V1Secret(
            metadata=client.V1ObjectMeta(
                name="room-101-panel-token", labels={"qsys.dev/secret-type": "client-token"}
            ),
            string_data={"token": panel_token},
        ),
    )
    client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
        "qsys.dev", "v1alpha1", ns, "accesspolicies", example("accesspolicy.yaml")
    )


def node_images(cluster: Cluster) -> set[str]:
    """Image references every node labelled NODE_SELECTOR holds (imported, never pulled):
    on the local cluster, what its real node's containerd lists; on another (kind), what
    each such node's kubelet reports in the Node's status."""
    if not cluster.local:
        held = [
            {name for image in must(node.status).images or [] for name in image.names or []}
            for node in real_nodes(cluster)
        ]
        return set.intersection(*held) if held else set()
    out = subprocess.run(
        ["ctr", "--address", str(CONTAINERD_SOCK), "-n", "k8s.io", "images", "ls", "-q"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return set(out.split())
