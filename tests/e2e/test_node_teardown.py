"""Teardown of the real node puts the host back as it was, also after a killed run.

The node is taken down (the session's), the host state it touches is snapshotted
(`node.sh snapshot`: sysctls, iptables/ip6tables rules, nftables tables, ipsets,
links, addresses, routes, network namespaces, mounts, cgroups, fixed paths,
processes), the node is brought up and given work that makes every component
leave state (pods, a Service, a NetworkPolicy), then every node process is killed
with SIGKILL as a killed test session would leave them, and `node.sh down` must
bring the snapshot back exactly. The node is started again for the tests after.
"""

from __future__ import annotations

import difflib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from kubernetes import client
from node_support import (
    create,
    deploy,
    images,
    real_namespace,
    require_real_node,
    restricted_container,
    wait_pods_ready,
)

from qsys_testkit.checkout import REPO
from qsys_testkit.cluster import Cluster, wait_for

pytestmark = [
    pytest.mark.node_exclusive,
    pytest.mark.e2e,
    pytest.mark.local_cluster,
    pytest.mark.usefixtures("real_node"),
]

NODE_SH = REPO / "hack" / "cluster" / "node.sh"
NODE_PROCESSES = (
    "containerd",
    "containerd-shim-runc-v2",
    "kubelet",
    "kube-proxy",
    "kube-router",
    "coredns",
)


def _node(*args: str) -> str:
    result = subprocess.run(
        ["bash", str(NODE_SH), *args], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"node.sh {' '.join(args)} failed:\n{result.stderr[-4000:]}"
    return result.stdout


def _up() -> None:
    _node("record")
    _node("net-up")
    _node("up")


def _down_and_up() -> None:
    _node("down")
    _up()


def _kill_node_processes() -> list[int]:
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv0 = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if os.path.basename(argv0) in NODE_PROCESSES:
            os.kill(int(proc.name), signal.SIGKILL)
            killed.append(int(proc.name))
    return killed


def test_teardown_restores_the_host_after_a_killed_run(cluster: Cluster) -> None:
    if not cluster.local:
        pytest.fail("the real node belongs to the local cluster (hack/cluster); unset KUBECONFIG")
    restored = False
    try:
        _node("down")
        before = _node("snapshot")
        left = before.split("## processes\n")[-1]
        assert not left, f"node processes left after node.sh down: {left.split()}"
        # The apiserver's address went with the bridge: a dial to it fails here, on this
        # machine, instead of following the default route off it (hack/fence.sh).
        assert "unreachable 198.18.0.0/15" in before, "no fence for 198.18.0.0/15"
        _up()
        with real_namespace(cluster) as ns:
            try:
                _exercise_kill_and_compare(cluster, ns, before)
            finally:
                # Back for the namespace's deletion.
                _down_and_up()
                restored = True
    except BaseException:
        if not restored:
            _down_and_up()
        raise
    require_real_node(cluster)
    # The apiserver listens on the bridge's address, which went away and came back:
    # let its clients settle before the next test (10 good answers in a row).
    streak = [0]

    def settled() -> bool:
        try:
            client.VersionApi(cluster.api).get_code(_request_timeout=2)
            streak[0] += 1
        except Exception:
            streak[0] = 0
        time.sleep(0.5)
        return streak[0] >= 10

    wait_for("the apiserver settled", settled, timeout=60)


def _exercise_kill_and_compare(cluster: Cluster, ns: str, before: str) -> None:
    image = images()["gateway"]
    container = restricted_container(
        "sleeper",
        image,
        ["python3", "-c", "import time; time.sleep(3600)"],
        ports=[{"containerPort": 8080}],
    )
    deploy(cluster, ns, container, replicas=2, port=80)
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    create(cluster, ns, policy)
    wait_pods_ready(cluster, ns, "app=sleeper", 2)
    during = _node("snapshot")
    for marker in ("qsys0", "KUBE-SERVICES", "KUBE-ROUTER-INPUT", "kubepods", "kubelet", "nsfs"):
        assert marker in during, f"{marker} missing from the host state while the node runs"
    assert _kill_node_processes()
    _node("down")
    after = _node("snapshot")
    diff = difflib.unified_diff(
        before.splitlines(), after.splitlines(), "before", "after", lineterm=""
    )
    assert after == before, "\n".join(diff)
