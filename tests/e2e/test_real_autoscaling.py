"""CPU autoscaling of a gateway on the real node: the chart-installed operator renders the
HorizontalPodAutoscaler, metrics-server (hack/cluster/node.sh) serves the gateway pods' CPU
through metrics.k8s.io, and the real HPA controller of kube-controller-manager scales the
gateway Deployment out under load from the host and back in when the load stops.

The local cluster runs the HPA controller with short timings (hack/cluster/up.sh: 5 s sync);
the QSysCore sets its own scale-down stabilisation window, so the scale-in also proves that
field end to end. Every wait is bounded and every phase's duration is printed (`-s`).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest
from kubernetes import client
from node_support import (
    is_ready,
    operator_release,
    real_namespace,
    simulated_core,
    start_simulator,
    tool,
    wait_answering,
    wait_pods_ready,
)
from operator_support import create, policy_body

from qsys_testkit.cluster import Cluster, must, wait_for
from qsys_testkit.kube import secret_text

# metrics-server as node.sh runs it: local cluster only.
pytestmark = [
    pytest.mark.node_lane("c"),
    pytest.mark.e2e,
    pytest.mark.local_cluster,
    pytest.mark.usefixtures("real_node", "metrics_api"),
    pytest.mark.tools("helm", "metrics-server"),
]

CORE = "hall"
GATEWAY = f"{CORE}-gateway"
SELECTOR = f"app.kubernetes.io/instance={CORE},app.kubernetes.io/name=qsys-gateway"
POLICY = "load-test"
TARGET_PERCENT = 50
SCALE_DOWN_WINDOW_S = 15
AUTOSCALING = {
    "minReplicas": 1,
    "maxReplicas": 3,
    "targetCPUUtilizationPercentage": TARGET_PERCENT,
    "scaleDownStabilizationSeconds": SCALE_DOWN_WINDOW_S,
}
# The HPA's utilisation is relative to the request; the limit keeps a loaded gateway from
# taking more than a third of a core on this shared machine.
RESOURCES = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"cpu": "300m", "memory": "256Mi"},
}
# The load: a few workers, each call on a fresh connection (so that kube-proxy spreads them
# over the pods the HPA adds), bounded in calls and seconds.
WORKERS = 4
MAX_CALLS = 300_000
MAX_LOAD_S = 240
SCALE_TIMEOUT_S = 180


def pod_cpu(cluster: Cluster, ns: str) -> dict[str, str]:
    """Gateway pod name -> CPU usage, as metrics.k8s.io reports it."""
    metrics = client.CustomObjectsApi(cluster.api).list_namespaced_custom_object(
        "metrics.k8s.io", "v1beta1", ns, "pods", label_selector=SELECTOR
    )
    assert isinstance(metrics, dict)
    return {
        item["metadata"]["name"]: item["containers"][0]["usage"]["cpu"]
        for item in metrics["items"]
        if item.get("containers")
    }


def hpa_status(cluster: Cluster, ns: str) -> client.V2HorizontalPodAutoscalerStatus:
    hpa = client.AutoscalingV2Api(cluster.api).read_namespaced_horizontal_pod_autoscaler(
        GATEWAY, ns
    )
    return must(hpa.status)


def utilisation(status: client.V2HorizontalPodAutoscalerStatus) -> int | None:
    for metric in status.current_metrics or []:
        if metric.resource and metric.resource.name == "cpu":
            value = metric.resource.current.average_utilization
            return None if value is None else int(value)
    return None


def hpa_condition(status: client.V2HorizontalPodAutoscalerStatus, type_: str) -> str | None:
    for cond in status.conditions or []:
        if cond.type == type_:
            return str(cond.status)
    return None


def gateway_pods(cluster: Cluster, ns: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(cluster.api).list_namespaced_pod(ns, label_selector=SELECTOR).items
    return [p for p in pods if must(p.metadata).deletion_timestamp is None]


@contextmanager
def load(url: str, token: str) -> Iterator[Counter[str]]:
    """StatusGet calls from the host to url until the block ends (or MAX_CALLS, or
    MAX_LOAD_S): outcome -> count, updated as the calls return."""
    outcomes: Counter[str] = Counter()
    stop = threading.Event()
    body = {"jsonrpc": "2.0", "id": 1, "method": "StatusGet", "params": {}}
    headers = {"Authorization": f"Bearer {token}"}

    async def run() -> None:
        deadline = time.monotonic() + MAX_LOAD_S
        timeout = aiohttp.ClientTimeout(total=5)
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

            async def worker() -> None:
                while (
                    not stop.is_set()
                    and time.monotonic() < deadline
                    and outcomes.total() < MAX_CALLS
                ):
                    try:
                        async with http.post(url, json=body, headers=headers) as reply:
                            await reply.read()
                            outcomes[str(reply.status)] += 1
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        outcomes[type(exc).__name__] += 1
                        await asyncio.sleep(0.05)

            await asyncio.gather(*(worker() for _ in range(WORKERS)))

    thread = threading.Thread(target=asyncio.run, args=(run(),), name="load")
    thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the load thread did not stop"


def kubectl_top(cluster: Cluster, ns: str) -> str:
    result = subprocess.run(
        [str(tool("kube", "kubectl")), "top", "pods", "-n", ns, "-l", SELECTOR],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KUBECONFIG": cluster.kubeconfig},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cpu_load_scales_the_gateway_out_and_back_in(cluster: Cluster) -> None:
    timings: dict[str, float] = {}
    with real_namespace(cluster) as ns, operator_release(cluster, ns):
        start_simulator(cluster, ns)
        gateway: dict[str, Any] = {"autoscaling": AUTOSCALING, "resources": RESOURCES}
        create(cluster, ns, simulated_core(CORE, gateway))
        rate = {"requestsPerSecond": 5000, "burst": 5000}
        create(cluster, ns, policy_body(POLICY, CORE, [{"name": "load"}], rateLimit=rate))
        started = time.monotonic()
        (pod,) = wait_pods_ready(cluster, ns, SELECTOR, 1, timeout=SCALE_TIMEOUT_S)
        timings["QSysCore applied -> 1 Ready gateway pod"] = time.monotonic() - started

        hpa = client.AutoscalingV2Api(cluster.api).read_namespaced_horizontal_pod_autoscaler(
            GATEWAY, ns
        )
        spec = must(hpa.spec)
        assert (spec.min_replicas, spec.max_replicas) == (1, 3)
        scale_down = must(must(spec.behavior).scale_down)
        assert scale_down.stabilization_window_seconds == SCALE_DOWN_WINDOW_S
        # The PDB follows the minimum: one pod may be all there is, so there is none.
        pdbs = client.PolicyV1Api(cluster.api).list_namespaced_pod_disruption_budget(ns)
        assert not pdbs.items, [must(p.metadata).name for p in pdbs.items]

        token = wait_for(
            "the load subject's token",
            lambda: secret_text(cluster.api, ns, f"{POLICY}-load-token", "token"),
            60,
        )
        svc = client.CoreV1Api(cluster.api).read_namespaced_service(GATEWAY, ns)
        url = f"http://{must(must(svc.spec).cluster_ip)}:8080/v1/rpc"

        def status_get() -> bool:
            req = urllib.request.Request(
                url,
                data=b'{"jsonrpc":"2.0","id":1,"method":"StatusGet","params":{}}',
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=5) as reply:
                return int(reply.status) == 200

        wait_answering("the gateway Service", status_get)

        # Metrics for the gateway pod, through the aggregated API and `kubectl top`.
        started = time.monotonic()
        name = must(must(pod.metadata).name)
        wait_for(f"metrics.k8s.io for {name}", lambda: name in pod_cpu(cluster, ns), 90)
        timings["metrics.k8s.io has the pod"] = time.monotonic() - started
        assert name in kubectl_top(cluster, ns)
        started = time.monotonic()

        def reading() -> int | None:
            status = hpa_status(cluster, ns)
            return utilisation(status) if hpa_condition(status, "ScalingActive") == "True" else None

        idle = wait_for("the HPA reading the pod's CPU", reading, 90)
        timings["HPA ScalingActive"] = time.monotonic() - started
        print(f"idle utilisation {idle}% of the {RESOURCES['requests']['cpu']} request")

        with load(url, token) as outcomes:
            started = time.monotonic()
            peak = [0]

            def scaled_out() -> list[client.V1Pod] | None:
                peak[0] = max(peak[0], utilisation(hpa_status(cluster, ns)) or 0)
                ready = [p for p in gateway_pods(cluster, ns) if is_ready(p)]
                return ready if len(ready) >= 2 else None

            ready = wait_for("the HPA scaling out to 2+ Ready pods", scaled_out, SCALE_TIMEOUT_S)
            timings["load -> 2+ Ready gateway pods"] = time.monotonic() - started
            print(f"peak utilisation {peak[0]}%, {len(ready)} Ready, calls so far {outcomes}")
            assert peak[0] > TARGET_PERCENT
            # The new pods are measured too (what a further decision relies on).
            names = {must(p.metadata).name for p in ready}
            wait_for(
                "metrics for every Ready gateway pod",
                lambda: names <= set(pod_cpu(cluster, ns)),
                90,
            )
            assert (
                not client.PolicyV1Api(cluster.api).list_namespaced_pod_disruption_budget(ns).items
            )
            assert len(gateway_pods(cluster, ns)) <= 3
        calls = outcomes.total()
        print(f"load: {calls} calls, {dict(outcomes)}")
        assert outcomes["200"] > 100, outcomes
        # Calls that failed while pods joined the Service stay a small share.
        assert outcomes["200"] >= 0.95 * calls, outcomes

        started = time.monotonic()

        def scaled_in() -> bool:
            dep = client.AppsV1Api(cluster.api).read_namespaced_deployment(GATEWAY, ns)
            pods = gateway_pods(cluster, ns)
            return must(dep.spec).replicas == 1 and len(pods) == 1 and is_ready(pods[0])

        wait_for("the HPA scaling back in to 1 pod", scaled_in, SCALE_TIMEOUT_S)
        timings["load stopped -> 1 gateway pod"] = time.monotonic() - started
        assert utilisation(hpa_status(cluster, ns)) is not None
        assert status_get()
    for what, seconds in timings.items():
        print(f"{what}: {seconds:.1f}s")
