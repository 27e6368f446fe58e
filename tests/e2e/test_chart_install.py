"""The Helm chart on a real API server: `helm install` (pinned helm) in namespaced mode
with peering, the operator Deployment becomes available, then the operator process
runs with the chart's own ServiceAccount (a TokenRequest token) and the chart's own
args and env, and reconciles a QSysCore and an AccessPolicy: the RBAC is sufficient.
`kubectl auth can-i` (pinned kubectl) with the same token shows it is not excessive.
A cluster-wide install is checked with can-i too.

Everything is removed afterwards (helm uninstall, namespaces, processes), also on
failure; the CRDs stay, as Helm leaves them.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from kube_support import REPO, Cluster, can_i, must, pinned_tool, token_kubeconfig, wait_for
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_support import (
    condition,
    core_body,
    create,
    get,
    policy_body,
    wait_condition,
)

from qsys_testkit import OperatorProcess

pytestmark = pytest.mark.e2e

CHART = REPO / "charts" / "qsys-operator"
TIMEOUT_S = 120


def _run(
    args: list[str | Path], env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S + 60,
        check=False,
        env=env,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr[-4000:]}"
        )
    return result


def _create_namespace(cluster: Cluster, name: str) -> None:
    client.CoreV1Api(cluster.api).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
    )


def _delete_namespace(cluster: Cluster, name: str) -> None:
    try:
        client.CoreV1Api(cluster.api).delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


class Release:
    """A helm release of the chart; uninstalled (and its namespace deleted) on exit."""

    def __init__(self, cluster: Cluster, values: list[str]) -> None:
        self.cluster = cluster
        suffix = uuid.uuid4().hex[:6]
        self.name = f"qsys-{suffix}"
        self.namespace = f"qsys-system-{suffix}"
        self.fullname = f"{self.name}-qsys-operator"
        self.values = values
        self.env = {**os.environ, "KUBECONFIG": cluster.kubeconfig}
        self.helm = pinned_tool("helm", "helm")

    def __enter__(self) -> Release:
        _create_namespace(self.cluster, self.namespace)
        args: list[str | Path] = [
            self.helm,
            "install",
            self.name,
            CHART,
            "--namespace",
            self.namespace,
            "--wait",
            "--timeout",
            f"{TIMEOUT_S}s",
        ]
        for value in self.values:
            args += ["--set", value]
        _run(args, self.env)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            _run(
                [
                    self.helm,
                    "uninstall",
                    self.name,
                    "--namespace",
                    self.namespace,
                    "--wait",
                    "--timeout",
                    f"{TIMEOUT_S}s",
                ],
                self.env,
                check=False,
            )
        finally:
            _delete_namespace(self.cluster, self.namespace)

    def deployment(self) -> client.V1Deployment:
        dep: client.V1Deployment = client.AppsV1Api(self.cluster.api).read_namespaced_deployment(
            self.fullname, self.namespace
        )
        return dep

    def token_kubeconfig(self, directory: Path) -> Path:
        """A kubeconfig holding a TokenRequest token of the chart's ServiceAccount."""
        path = directory / f"{self.name}.kubeconfig"
        return token_kubeconfig(self.cluster, self.fullname, self.namespace, path)


def _chart_process(dep: client.V1Deployment, kubeconfig: Path, log: Path) -> OperatorProcess:
    """The operator with the command line and environment of the chart's Deployment (its
    probe addresses moved to free loopback ports); not started."""
    (container,) = must(dep.spec.template.spec).containers
    env = {e.name: e.value or "" for e in must(container.env)}
    base = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        **env,
        # Stand-in for the pod network: kwok pod IPs are loopback addresses.
        "QSYS_RESYNC_SECONDS": "2",
    }
    return OperatorProcess(kubeconfig, must(container.args), base_env=base, log=log)


@pytest.fixture
def watched(cluster: Cluster) -> Iterator[str]:
    name = f"e2e-chart-{uuid.uuid4().hex[:6]}"
    _create_namespace(cluster, name)
    try:
        yield name
    finally:
        _delete_namespace(cluster, name)


@pytest.fixture
def other(cluster: Cluster) -> Iterator[str]:
    name = f"e2e-other-{uuid.uuid4().hex[:6]}"
    _create_namespace(cluster, name)
    try:
        yield name
    finally:
        _delete_namespace(cluster, name)


def _available(release: Release, replicas: int) -> client.V1Deployment:
    def probe() -> client.V1Deployment | None:
        dep = release.deployment()
        return dep if (must(dep.status).available_replicas or 0) >= replicas else None

    return wait_for("operator Deployment available", probe, timeout=TIMEOUT_S)


def test_namespaced_install_rbac_is_sufficient_and_not_excessive(
    cluster: Cluster, watched: str, other: str, tmp_path: Path
) -> None:
    values = [f"watchNamespaces={{{watched}}}", "replicas=2"]
    with Release(cluster, values) as release:
        dep = _available(release, 2)
        # With kwok no container runs; the pods are scheduled and count as available.
        assert dep.spec.replicas == 2
        assert must(dep.spec.template.spec).service_account_name == release.fullname

        kubeconfig = release.token_kubeconfig(tmp_path)
        op = _chart_process(dep, kubeconfig, tmp_path / "op.log")
        assert f"--peering={release.fullname}" in op.argv
        assert op.env["QSYS_WATCH_NAMESPACES"] == watched
        assert op.env["QSYS_OPERATOR_NAMESPACE"] == release.namespace

        with op:
            create(cluster, watched, core_body("hall", 1710, replicas=2))
            create(cluster, watched, policy_body("ops", "hall", [{"name": "agent"}]))

            apps, v1 = client.AppsV1Api(cluster.api), client.CoreV1Api(cluster.api)
            net, pol = client.NetworkingV1Api(cluster.api), client.PolicyV1Api(cluster.api)
            wait_for(
                "gateway Deployment",
                lambda: _exists(apps.read_namespaced_deployment, "hall-gateway", watched),
            )
            wait_for(
                "Service", lambda: _exists(v1.read_namespaced_service, "hall-gateway", watched)
            )
            wait_for(
                "config Secret",
                lambda: _exists(v1.read_namespaced_secret, "hall-gateway-config", watched),
            )
            wait_for(
                "NetworkPolicy",
                lambda: _exists(net.read_namespaced_network_policy, "hall-gateway", watched),
            )
            wait_for(
                "PDB",
                lambda: _exists(pol.read_namespaced_pod_disruption_budget, "hall-gateway", watched),
            )
            wait_for(
                "token Secret",
                lambda: _exists(v1.read_namespaced_secret, "ops-agent-token", watched),
            )

            policy = wait_condition(
                cluster, watched, "AccessPolicy", "ops", "Ready", "True", timeout=TIMEOUT_S
            )
            assert condition(policy, "Bound")["status"] == "True"
            core = wait_condition(
                cluster, watched, "QSysCore", "hall", "GatewayAvailable", "True", timeout=TIMEOUT_S
            )

            # The status probe listed the gateway pods (RBAC: pods list) and dialled them;
            # no gateway process listens on the kwok pod IPs, so the answer is "no answer".
            def probed() -> dict[str, Any] | None:
                obj = get(cluster, watched, "QSysCore", "hall")
                return (
                    obj
                    if condition(obj, "CoreConnected").get("reason") == "GatewayUnreachable"
                    else None
                )

            core = wait_for("CoreConnected probed", probed, timeout=TIMEOUT_S)
            assert core["status"]["observedGeneration"] == core["metadata"]["generation"]
            assert core["status"]["subjects"] == 1

            # Peering under the chart's RBAC: the KopfPeering of the watched namespace exists.
            peering = cast(
                dict[str, Any],
                client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
                    "kopf.dev", "v1", watched, "kopfpeerings", release.fullname
                ),
            )
            assert peering["metadata"]["name"] == release.fullname
            log = op.output()
            assert "403" not in log, log[-4000:]
            assert "Forbidden" not in log, log[-4000:]

        # Sufficient (the verbs the operator uses), and nothing more.
        sa = kubeconfig
        for verb_resource in (
            ("list", "qsyscores.qsys.dev"),
            ("watch", "accesspolicies.qsys.dev"),
            ("patch", "qsyscores.qsys.dev", "--subresource=status"),
            ("patch", "deployments.apps"),
            ("create", "secrets"),
            ("delete", "networkpolicies.networking.k8s.io"),
            ("list", "pods"),
            ("create", "events"),
            ("patch", "kopfpeerings.kopf.dev"),
        ):
            assert can_i(sa, *verb_resource, "-n", watched), verb_resource
        assert can_i(sa, "list", "customresourcedefinitions.apiextensions.k8s.io")
        assert can_i(sa, "watch", "namespaces")  # Kopf follows the watched namespaces
        denied = [
            ("delete", "nodes"),
            ("list", "nodes"),
            ("get", "secrets", "-n", other),
            ("list", "secrets", "--all-namespaces"),
            ("get", "secrets", "-n", release.namespace),
            ("create", "deployments.apps", "-n", other),
            ("list", "qsyscores.qsys.dev", "-n", other),
            ("create", "clusterroles.rbac.authorization.k8s.io"),
            ("create", "rolebindings.rbac.authorization.k8s.io", "-n", watched),
            ("escalate", "roles.rbac.authorization.k8s.io", "-n", watched),
            ("impersonate", "serviceaccounts", "-n", watched),
            ("*", "*", "-n", watched),
            ("*", "*", "--all-namespaces"),
            ("create", "pods", "-n", watched),
            ("create", "pods/exec", "-n", watched),
            ("update", "secrets", "-n", watched),
            ("patch", "qsyscores.qsys.dev", "-n", watched),
            ("delete", "qsyscores.qsys.dev", "-n", watched),
            ("get", f"namespaces/{other}"),
            ("delete", f"namespaces/{other}"),
            ("create", "namespaces"),
            ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
            ("patch", "clusterkopfpeerings.kopf.dev"),
        ]
        allowed = [d for d in denied if can_i(sa, *d)]
        assert not allowed, f"the chart's ServiceAccount may do more than it needs: {allowed}"


def test_cluster_wide_install_grants_only_the_operator_verbs(
    cluster: Cluster, other: str, tmp_path: Path
) -> None:
    with Release(cluster, []) as release:
        dep = _available(release, 1)
        assert "--standalone" in must(must(dep.spec.template.spec).containers[0].args)
        sa = release.token_kubeconfig(tmp_path)
        for d in (
            ("list", "qsyscores.qsys.dev", "--all-namespaces"),
            ("patch", "deployments.apps", "-n", other),
            ("create", "secrets", "-n", other),
        ):
            assert can_i(sa, *d), d
        denied = [
            ("delete", "nodes"),
            ("create", "clusterroles.rbac.authorization.k8s.io"),
            ("*", "*", "--all-namespaces"),
            ("update", "secrets", "-n", other),
            ("create", "pods", "-n", other),
            ("list", "namespaces"),
            ("patch", "clusterkopfpeerings.kopf.dev"),  # standalone: no peering rights
        ]
        allowed = [d for d in denied if can_i(sa, *d)]
        assert not allowed, allowed


def _exists(read: Any, name: str, namespace: str) -> bool:
    try:
        read(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True
