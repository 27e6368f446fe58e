"""Helpers for e2e tests on the real node (hack/cluster/node.sh): namespaces whose
pods land there, the images `make images` built, run-to-completion client pods.

Real pods run only on the local cluster's node `qsys-node` (tainted, so that nothing
else lands there); kwok's fake nodes keep everything else. A namespace made by
`real_namespace` carries the PodNodeSelector and PodTolerationRestriction
annotations, so every pod in it, including the ones Deployments render, goes to
the real node without a change to the objects themselves.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kube_support import Cluster, must, wait_for
from kubernetes import client, utils
from kubernetes.client.exceptions import ApiException

from qsys_testkit.checkout import image_names

NODE_NAME = "qsys-node"
NODE_LABEL = ("qsys.io/node", "real")
POD_CIDR_PREFIX = "198.18."
SERVICE_CIDR_PREFIX = "198.19."
REAL_NODE_ANNOTATIONS = {
    "scheduler.alpha.kubernetes.io/node-selector": f"{NODE_LABEL[0]}={NODE_LABEL[1]}",
    "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps(
        [
            {
                "key": NODE_LABEL[0],
                "operator": "Equal",
                "value": NODE_LABEL[1],
                "effect": "NoSchedule",
            }
        ]
    ),
}


images = image_names


def require_real_node(cluster: Cluster) -> client.V1Node:
    """The real node, Ready; a failure (never a skip) when the cluster has none."""
    try:
        node = client.CoreV1Api(cluster.api).read_node(NODE_NAME)
    except ApiException as exc:
        if exc.status != 404:
            raise
        pytest.fail(
            f"the cluster has no real node {NODE_NAME}: hack/cluster/up.sh starts it "
            "(unless QSYS_REAL_NODE=0; it needs root)",
            pytrace=False,
        )
    ready = [c.status for c in must(node.status).conditions or [] if c.type == "Ready"]
    assert ready == ["True"], f"node {NODE_NAME} is not Ready: {ready}"
    return node


@contextmanager
def real_namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace whose pods run on the real node; deleted afterwards, waiting
    until its pods are gone so that no container outlives the test."""
    require_real_node(cluster)
    core = client.CoreV1Api(cluster.api)
    name = f"e2e-real-{uuid.uuid4().hex[:8]}"
    meta = client.V1ObjectMeta(name=name, annotations=REAL_NODE_ANNOTATIONS)
    core.create_namespace(client.V1Namespace(metadata=meta))
    try:
        yield name
    finally:
        core.delete_namespace(name, grace_period_seconds=0)

        def gone() -> bool:
            try:
                core.read_namespace(name)
            except ApiException as exc:
                if exc.status == 404:
                    return True
                raise
            return False

        wait_for(f"namespace {name} deleted", gone, timeout=120)


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
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
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

    return wait_for(f"{count} Ready pods {selector} in {ns}", ready, timeout=timeout)


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
