"""The operator at scale on the local control plane: 200 QSysCores and 400 AccessPolicies
applied at once.

Measured: the time from the first create until every QSysCore is Ready and every child
exists (Deployment, Service, config Secret, NetworkPolicy per core; a generated token
Secret per policy), reconciles per second over that time (from the operator's
qsys_operator_reconcile_total), and the operator's peak RSS (VmHWM). Targets:
all Ready within 60 s, RSS under 150 MiB.

The cluster is $KUBECONFIG when set, else the local control plane of hack/cluster
(started when not running, and then stopped afterwards). The operator runs as a
subprocess watching a fresh namespace, with the gateway probe off (kwok pods run nothing,
so nothing would answer; CoreConnected is then Unknown/ProbeDisabled, which Ready
accepts) and the Cores at 127.0.0.1: nothing but loopback is dialled. The namespace is
deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from qsys_testkit import LOOPBACK, OperatorProcess
from qsys_testkit.cluster import any_cluster
from qsys_testkit.kube import apply_crds

from .common import BenchContext, Result

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION = "qsys.dev", "v1alpha1"
CORES = 200
POLICIES_PER_CORE = 2
APPLY_THREADS = 16
TIMEOUT_S = 180.0
POLL_S = 0.5

TARGET_READY_S = 60.0
TARGET_RSS_MIB = 150.0


# ---- cluster and operator ---------------------------------------------------------------


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

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


# ---- resources -----------------------------------------------------------------------------


def _available_replicas(dep: client.V1Deployment) -> int:
    assert dep.status is not None
    return dep.status.available_replicas or 0


def core_body(i: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "QSysCore",
        "metadata": {"name": f"core-{i:03d}"},
        "spec": {"core": {"host": LOOPBACK, "port": 1710}, "gateway": {"replicas": 1}},
    }


def _policy(i: int, j: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AccessPolicy",
        "metadata": {"name": f"policy-{i:03d}-{j}"},
        "spec": {
            "coreRef": {"name": f"core-{i:03d}"},
            "subjects": [{"name": f"agent-{j}"}],
            "rules": [{"methods": ["StatusGet", "Component.Get*"]}],
        },
    }


def _count(items: list[Any], prefix: str) -> int:
    return sum(1 for o in items if o.metadata.name.startswith(prefix))


def _measure(ctx: BenchContext) -> list[Result]:
    n_policies = CORES * POLICIES_PER_CORE
    scenario = f"{CORES} QSysCores + {n_policies} AccessPolicies at once (time to Ready)"
    with any_cluster() as kubeconfig:
        api = api_client(kubeconfig)
        v1, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        net, custom = client.NetworkingV1Api(api), client.CustomObjectsApi(api)
        ns = f"bench-opscale-{uuid.uuid4().hex[:6]}"
        v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        work = Path(tempfile.mkdtemp(prefix="qsys-bench-operator-"))
        operator: BenchOperator | None = None
        try:
            operator = BenchOperator(kubeconfig, ns, work / "operator.log").start()
            bodies = [("qsyscores", core_body(i)) for i in range(CORES)]
            bodies += [
                ("accesspolicies", _policy(i, j))
                for i in range(CORES)
                for j in range(POLICIES_PER_CORE)
            ]

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
                if available_at is None:
                    deps = apps.list_namespaced_deployment(ns).items
                    available = [d for d in deps if _available_replicas(d) >= 1]
                    if len(available) == CORES:
                        available_at = now
                if len(ready_at) == CORES:
                    secrets = v1.list_namespaced_secret(ns).items
                    children_ok = (
                        _count(apps.list_namespaced_deployment(ns).items, "core-") == CORES
                        and _count(v1.list_namespaced_service(ns).items, "core-") == CORES
                        and _count(net.list_namespaced_network_policy(ns).items, "core-") == CORES
                        and _count(secrets, "core-") == CORES
                        and _count(secrets, "policy-") == n_policies
                    )
                if children_ok or now > TIMEOUT_S:
                    elapsed = time.monotonic() - start
                    break
                time.sleep(POLL_S)

            counts = operator.reconciles()
            rss = operator.peak_rss_mib()
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
    ok_ready = children_ok and elapsed <= TARGET_READY_S
    ctx.notes.append(
        f"operator scale: {len(ready_at)}/{CORES} QSysCores Ready and every child present "
        f"{'after' if children_ok else 'NOT within'} {elapsed:.1f} s (creates took "
        f"{applied:.1f} s, {APPLY_THREADS} threads; every gateway Deployment available after "
        f"{'-' if available_at is None else f'{available_at:.1f}'} s); "
        f"target ≤ {TARGET_READY_S:.0f} s: {'PASS' if ok_ready else 'FAIL'}"
    )
    ctx.notes.append(
        f"operator scale: {total:.0f} reconciles ({by_kind['QSysCore']:.0f} QSysCore, "
        f"{by_kind['AccessPolicy']:.0f} AccessPolicy, {failed:.0f} not successful), "
        f"{total / elapsed:.1f}/s"
    )
    ctx.notes.append(
        f"operator scale: peak RSS {rss:.1f} MiB (VmHWM); target < {TARGET_RSS_MIB:.0f} MiB: "
        f"{'PASS' if rss < TARGET_RSS_MIB else 'FAIL'}"
    )
    latencies = sorted(ready_at.values())
    not_ready = CORES - len(ready_at) + (0 if children_ok else 1)
    return [Result("operator", scenario, int(total), not_ready, elapsed, latencies)]


async def run(ctx: BenchContext) -> list[Result]:
    return await asyncio.to_thread(_measure, ctx)
