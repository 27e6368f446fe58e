"""The operator at scale on the local control plane: `--cores` QSysCores (default 200) and
`--policies` AccessPolicies (default twice the cores, spread round-robin over the cores)
applied at once.

Measured: the time from the first create until every QSysCore is Ready and every child
exists (Deployment, Service, config Secret, NetworkPolicy per core; a generated token
Secret per policy), reconciles per second over that time (from the operator's
qsys_operator_reconcile_total), Kubernetes API calls per reconcile (from
qsys_operator_api_calls_total), and the operator's peak RSS (VmHWM). Targets: 200 cores
Ready within 60 s and RSS under 150 MiB; 1,000 cores with 2,000 policies within 5 min
and RSS under 200 MiB. The bench waits up to `timeout_s(cores)`, long enough to see the
real time at either scale.

The cluster is $KUBECONFIG when set, else the local control plane of hack/cluster with
kwok nodes only (QSYS_REAL_NODE=0 unless set; started when not running, and then stopped
afterwards). The operator runs as a
subprocess watching a fresh namespace, with the gateway probe off (kwok pods run nothing,
so nothing would answer; CoreConnected is then Unknown/ProbeDisabled, which Ready
accepts) and the Cores at 127.0.0.1: nothing but loopback is dialled. The namespace is
deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from qsys_testkit import LOOPBACK, OperatorProcess
from qsys_testkit.kube import apply_crds

from .common import BenchContext, Result

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION = "qsys.dev", "v1alpha1"
CORES = 200
POLICIES_PER_CORE = 2
APPLY_THREADS = 16
POLL_S = 0.5
UP_TIMEOUT_S = 240
CONTROL_PLANE_QPS = 200
"""Client-side request rate of the controller manager and scheduler of a control plane the
bench starts (upstream defaults 20 and 50/s): at 20/s the ReplicaSet controller alone
needs minutes for a thousand gateway pods, which would measure its rate limiter, not
the operator."""
CONTROL_PLANE_SYNCS = 20
"""Deployments and ReplicaSets its controller manager syncs at once (upstream default 5)."""
KWOK_NODE_PODS = 250
"""Pods a kwok node of hack/cluster holds (hack/cluster/kwok.yaml): two nodes hold 500,
so 1,000 gateways need more nodes."""


def timeout_s(cores: int) -> float:
    """How long the bench waits for everything to be Ready: 180 s, or 0.9 s per core."""
    return max(180.0, 0.9 * cores)


def targets(cores: int) -> tuple[float, float]:
    """(seconds to all Ready, peak RSS MiB): issue targets at 200 and at 1,000 cores."""
    return (60.0, 150.0) if cores <= CORES else (300.0, 200.0)


# ---- cluster and operator ---------------------------------------------------------------


def fake_nodes(pods: int) -> int:
    """kwok nodes (KWOK_NODE_PODS pods each) for `pods` gateway pods, with room to spare."""
    return max(2, math.ceil(pods * 1.1 / KWOK_NODE_PODS))


def _script(name: str, nodes: int = 2) -> subprocess.CompletedProcess[str]:
    """A hack/cluster script; without the real node unless QSYS_REAL_NODE says otherwise
    (kwok nodes run the gateway pods, so no image is needed), with `nodes` kwok nodes
    unless QSYS_FAKE_NODES says otherwise, and the control plane's client rates and
    controller syncs raised (CONTROL_PLANE_QPS, CONTROL_PLANE_SYNCS) unless the
    QSYS_*_QPS and QSYS_CONTROLLER_MANAGER_SYNCS variables say otherwise."""
    defaults = {
        "QSYS_REAL_NODE": "0",
        "QSYS_FAKE_NODES": str(nodes),
        "QSYS_CONTROLLER_MANAGER_QPS": str(CONTROL_PLANE_QPS),
        "QSYS_SCHEDULER_QPS": str(CONTROL_PLANE_QPS),
        "QSYS_CONTROLLER_MANAGER_SYNCS": str(CONTROL_PLANE_SYNCS),
    }
    return subprocess.run(
        ["bash", str(REPO / "hack" / "cluster" / name)],
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT_S,
        check=False,
        cwd=REPO,
        env={**defaults, **os.environ},
    )


@contextlib.contextmanager
def cluster_kubeconfig(pods: int = CORES) -> Iterator[str]:
    """The cluster's kubeconfig; a control plane started here has kwok nodes for `pods`."""
    given = os.environ.get("KUBECONFIG", "")
    if given:
        yield given
        return
    state = Path(os.environ.get("QSYS_CLUSTER_DIR") or REPO / ".cache" / "cluster")
    started = False
    try:
        try:
            result = _script("up.sh", fake_nodes(pods))
        except subprocess.TimeoutExpired:
            started = True
            raise
        if result.returncode != 0:
            raise RuntimeError(f"hack/cluster/up.sh failed:\n{result.stderr[-3000:]}")
        started = result.stdout.strip() == "started"
        yield str(state / "kubeconfig")
    finally:
        if started:
            _script("down.sh")


def api_client(kubeconfig: str) -> client.ApiClient:
    """A client for the bench's own calls (pooled for APPLY_THREADS), the CRDs applied."""
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = APPLY_THREADS * 2
    api = client.ApiClient(cfg)
    apply_crds(api, REPO / "crds")
    return api


class BenchOperator(OperatorProcess):
    """The operator with the gateway probe off, watching `namespace` (and `more`)."""

    def __init__(self, kubeconfig: str, namespace: str, log: Path, *more: str) -> None:
        env = {
            "QSYS_GATEWAY_PROBE": "false",
            "QSYS_GATEWAY_PROBE_CIDRS": "127.0.0.0/8",
            "QSYS_OPERATOR_NAMESPACE": namespace,
        }
        args = [a for ns in (namespace, *more) for a in ("--namespace", ns)] + ["--standalone"]
        super().__init__(kubeconfig, args, env=env, log=log, start_new_session=True)

    def reconciles(self) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        pattern = r'^qsys_operator_reconcile_total\{kind="(\w+)",result="(\w+)"\} (\S+)$'
        for kind, result, value in re.findall(pattern, self.metrics(), re.M):
            out[(kind, result)] = float(value)
        return out

    def api_calls(self) -> dict[str, float]:
        """Kubernetes API calls by call (qsys_operator_api_calls_total)."""
        pattern = r'^qsys_operator_api_calls_total\{call="([^"]+)"\} (\S+)$'
        return {call: float(v) for call, v in re.findall(pattern, self.metrics(), re.M)}

    def cpu_seconds(self) -> float:
        """User + system CPU time the operator has used (/proc/<pid>/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


# ---- resources -----------------------------------------------------------------------------


def _available(apps: client.AppsV1Api, ns: str) -> int:
    """Deployments of the namespace with an available replica, from the list's JSON: a
    thousand V1Deployment models per poll would take the bench seconds of the CPU the
    control plane and the operator share."""
    resp = cast(Any, apps.list_namespaced_deployment(ns, _preload_content=False))
    items = json.loads(resp.data)["items"]
    return sum(1 for d in items if ((d.get("status") or {}).get("availableReplicas") or 0) >= 1)


def poll_s(cores: int) -> float:
    """How often the bench lists the cores: every 0.5 s, or 1 ms per core at scale (each
    poll lists every core and Deployment; its CPU is taken from the measured system). The
    times it reports are late by up to one period."""
    return max(POLL_S, cores / 1000)


def core_body(i: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "QSysCore",
        "metadata": {"name": f"core-{i:04d}"},
        "spec": {"core": {"host": LOOPBACK, "port": 1710}, "gateway": {"replicas": 1}},
    }


def _policy(k: int, cores: int) -> dict[str, Any]:
    """The k-th policy, bound to core k mod cores."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AccessPolicy",
        "metadata": {"name": f"policy-{k:05d}"},
        "spec": {
            "coreRef": {"name": f"core-{k % cores:04d}"},
            "subjects": [{"name": f"agent-{k}"}],
            "rules": [{"methods": ["StatusGet", "Component.Get*"]}],
        },
    }


def _count(items: list[Any], prefix: str, suffix: str = "") -> int:
    return sum(
        1 for o in items if o.metadata.name.startswith(prefix) and o.metadata.name.endswith(suffix)
    )


def _measure(ctx: BenchContext) -> list[Result]:
    cores_n = ctx.cores or CORES
    n_policies = ctx.policies if ctx.policies is not None else cores_n * POLICIES_PER_CORE
    timeout = timeout_s(cores_n)
    target_ready, target_rss = targets(cores_n)
    scenario = f"{cores_n} QSysCores + {n_policies} AccessPolicies at once (time to Ready)"
    with cluster_kubeconfig(cores_n) as kubeconfig:
        api = api_client(kubeconfig)
        v1, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        net, custom = client.NetworkingV1Api(api), client.CustomObjectsApi(api)
        ns = f"bench-opscale-{uuid.uuid4().hex[:6]}"
        room = sum(
            int((n.status.allocatable or {}).get("pods", "0"))
            for n in v1.list_node().items
            if n.status is not None
        )
        if room < cores_n:
            ctx.notes.append(
                f"operator scale: the cluster's nodes hold {room} pods, so at most {room} of "
                f"{cores_n} gateways can be available (QSYS_FAKE_NODES, or a bigger cluster)"
            )
        v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        work = Path(tempfile.mkdtemp(prefix="qsys-bench-operator-"))
        operator: BenchOperator | None = None
        try:
            operator = BenchOperator(kubeconfig, ns, work / "operator.log").start()
            bodies = [("qsyscores", core_body(i)) for i in range(cores_n)]
            bodies += [("accesspolicies", _policy(k, cores_n)) for k in range(n_policies)]

            def create(item: tuple[str, dict[str, Any]]) -> None:
                custom.create_namespaced_custom_object(GROUP, VERSION, ns, item[0], item[1])

            start = time.monotonic()
            with ThreadPoolExecutor(APPLY_THREADS) as pool:
                list(pool.map(create, bodies))
            applied = time.monotonic() - start

            ready_at: dict[str, float] = {}
            available_at: float | None = None  # every Deployment available (cluster side)
            children_ok = False
            elapsed = 0.0
            while True:
                operator.check()
                now = time.monotonic() - start
                cores = cast(
                    dict[str, Any],
                    custom.list_namespaced_custom_object(GROUP, VERSION, ns, "qsyscores"),
                )
                for obj in cores["items"]:
                    conds = (obj.get("status") or {}).get("conditions") or []
                    if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                        ready_at.setdefault(obj["metadata"]["name"], now)
                if available_at is None and _available(apps, ns) == cores_n:
                    available_at = now
                if len(ready_at) == cores_n:
                    secrets = v1.list_namespaced_secret(ns).items
                    children_ok = (
                        _count(apps.list_namespaced_deployment(ns).items, "core-") == cores_n
                        and _count(v1.list_namespaced_service(ns).items, "core-") == cores_n
                        and _count(net.list_namespaced_network_policy(ns).items, "core-") == cores_n
                        and _count(secrets, "core-", "-gateway-config") == cores_n
                        and _count(secrets, "core-", "-gateway-token-key") == cores_n
                        and _count(secrets, "policy-") == n_policies
                    )
                if children_ok or now > timeout:
                    elapsed = time.monotonic() - start
                    break
                time.sleep(poll_s(cores_n))

            counts = operator.reconciles()
            calls = operator.api_calls()
            rss = operator.peak_rss_mib()
            cpu = operator.cpu_seconds()
        finally:
            with contextlib.suppress(ApiException):
                v1.delete_namespace(ns)
            if operator is not None:
                operator.stop()
            api.close()  # type: ignore[no-untyped-call]

    total = sum(counts.values())
    failed = sum(v for (_, result), v in counts.items() if result != "success")
    by_kind = {
        kind: sum(v for (k, _), v in counts.items() if k == kind)
        for kind in ("QSysCore", "AccessPolicy")
    }
    core_runs = by_kind["QSysCore"]
    ok_ready = children_ok and elapsed <= target_ready
    ctx.notes.append(
        f"operator scale: {len(ready_at)}/{cores_n} QSysCores Ready and every child present "
        f"{'after' if children_ok else 'NOT within'} {elapsed:.1f} s (creates took "
        f"{applied:.1f} s, {APPLY_THREADS} threads; every gateway Deployment available after "
        f"{'-' if available_at is None else f'{available_at:.1f}'} s); "
        f"target ≤ {target_ready:.0f} s: {'PASS' if ok_ready else 'FAIL'}"
    )
    ctx.notes.append(
        f"operator scale: {total:.0f} reconciles ({by_kind['QSysCore']:.0f} QSysCore, "
        f"{by_kind['AccessPolicy']:.0f} AccessPolicy, {failed:.0f} not successful), "
        f"{total / elapsed:.1f}/s"
    )
    total_calls = sum(calls.values())
    top = ", ".join(
        f"{name} {n / max(core_runs, 1):.1f}"
        for name, n in sorted(calls.items(), key=lambda kv: -kv[1])[:10]
    )
    ctx.notes.append(
        f"operator scale: {total_calls:.0f} API calls, {total_calls / max(core_runs, 1):.1f} "
        f"per QSysCore reconcile ({top})"
    )
    ctx.notes.append(
        f"operator scale: operator CPU {cpu:.1f} s ({cpu / elapsed * 100:.0f} % of one core "
        f"over {elapsed:.1f} s), {cpu / max(core_runs, 1) * 1000:.0f} ms per QSysCore reconcile"
    )
    ctx.notes.append(
        f"operator scale: peak RSS {rss:.1f} MiB (VmHWM); target < {target_rss:.0f} MiB: "
        f"{'PASS' if rss < target_rss else 'FAIL'}"
    )
    latencies = sorted(ready_at.values())
    not_ready = cores_n - len(ready_at) + (0 if children_ok else 1)
    return [Result("operator", scenario, int(total), not_ready, elapsed, latencies)]


async def run(ctx: BenchContext) -> list[Result]:
    return await asyncio.to_thread(_measure, ctx)
