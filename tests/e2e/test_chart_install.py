"""The Helm chart on a real API server: `helm install` (pinned helm) in namespaced mode
with peering, the operator Deployment becomes available, then the operator process
runs with the chart's own ServiceAccount (a TokenRequest token) and the chart's own
args and env, and reconciles a QSysCore and an AccessPolicy: the RBAC is sufficient.
`kubectl auth can-i` (pinned kubectl) with the same token shows it is not excessive.
A cluster-wide install is checked with can-i too.

Everything is removed afterwards (helm uninstall, namespaces, processes), also on
failure. The releases share the CRDs of crds/ (applied by the tests, crds.enabled=false),
except the one that shows the chart's own CRD handling: Helm owns them, and `helm
uninstall` leaves them (helm.sh/resource-policy: keep).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_support import (
    condition,
    core_body,
    create,
    get,
    patch,
    policy_body,
    wait_condition,
)

from qsys_operator.k8s import endpoint_addresses
from qsys_testkit import OperatorProcess
from qsys_testkit.checkout import REPO, pinned_tool
from qsys_testkit.cluster import Cluster, can_i, must, token_kubeconfig, wait_for
from qsys_testkit.kube import apply_crds, secret_text

pytestmark = [pytest.mark.e2e, pytest.mark.floor, pytest.mark.tools("helm")]

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

    def __init__(self, cluster: Cluster, values: list[str], own_crds: bool = False) -> None:
        """own_crds: the release installs (takes over) the CRDs, as a user's would;
        otherwise crds/ is applied first and the release leaves the CRDs alone."""
        self.cluster = cluster
        self.own_crds = own_crds
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
        if self.own_crds:
            args.append("--take-ownership")
        else:
            apply_crds(self.cluster.api, REPO / "crds")
            args += ["--set", "crds.enabled=false"]
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


def _identity_verbs(release: Release) -> list[tuple[str, ...]]:
    """What the operator needs for ServiceAccount subjects, in both modes (plus
    serviceaccounts in the namespaces it manages)."""
    role = f"clusterroles.rbac.authorization.k8s.io/{release.fullname}-gateway-tokenreview"
    return [
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("watch", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("delete", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("bind", role),
        ("get", "endpointslices.discovery.k8s.io/kubernetes", "-n", "default"),
    ]


IDENTITY_DENIED = [
    # It may bind only the chart's TokenReview role, and read only the API server's slice.
    ("bind", "clusterroles.rbac.authorization.k8s.io/cluster-admin"),
    ("bind", "clusterroles.rbac.authorization.k8s.io/admin"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "tokenreviews.authentication.k8s.io"),
    ("create", "serviceaccounts", "--subresource=token", "-n", "default"),
    ("list", "endpointslices.discovery.k8s.io", "-n", "default"),
    ("get", "endpointslices.discovery.k8s.io/other", "-n", "default"),
]


def _available(release: Release, replicas: int) -> client.V1Deployment:
    def probe() -> client.V1Deployment | None:
        dep = release.deployment()
        return dep if (must(dep.status).available_replicas or 0) >= replicas else None

    return wait_for("operator Deployment available", probe, timeout=TIMEOUT_S)


@pytest.mark.local_cluster  # kwok's pods answer nothing at their loopback addresses
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
            _no_api_refusals(op.output())

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
        for identity in _identity_verbs(release):
            assert can_i(sa, *identity), identity
        assert can_i(sa, "patch", "serviceaccounts", "-n", watched)
        denied = [
            *IDENTITY_DENIED,
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
            *_identity_verbs(release),
            ("patch", "serviceaccounts", "-n", other),
        ):
            assert can_i(sa, *d), d
        denied = [
            *IDENTITY_DENIED,
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


def _gone(read: Any, *args: str) -> bool:
    try:
        read(*args)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def _no_api_refusals(log: str) -> None:
    """No request of the operator was refused by RBAC: the client's ApiException says
    "(403)" and "Forbidden", Kopf's APIForbiddenError "forbidden". A bare "403" is not
    looked for: it turns up in the operator's random peering priority and in timestamps."""
    refused = [line for line in log.splitlines() if "forbidden" in line.lower() or "(403)" in line]
    assert not refused, "\n".join(refused[-20:])


def _api_server_endpoints(cluster: Cluster) -> list[tuple[str, int]]:
    """The ready endpoints of the `kubernetes` Service, as the operator reads them."""
    try:
        found = client.DiscoveryV1Api(cluster.api).read_namespaced_endpoint_slice(
            "kubernetes", "default"
        )
    except ApiException as exc:
        if exc.status == 404:
            return []
        raise
    return endpoint_addresses(cast(Any, cluster.api).sanitize_for_serialization(found))


def test_service_account_subjects_under_the_chart_rbac(
    cluster: Cluster, watched: str, tmp_path: Path
) -> None:
    """An AccessPolicy subject naming a ServiceAccount, reconciled by the operator with the
    chart's own (namespaced-mode) RBAC: the gateway gets a ServiceAccount, its token and a
    ClusterRoleBinding to the chart's TokenReview role (which it may then use, and nothing
    else) only while some subject is a ServiceAccount; the binding is corrected when
    tampered with and removed with the last such subject and with the core."""
    admin = Path(cluster.kubeconfig)
    gateway_user = f"system:serviceaccount:{watched}:hall-gateway"
    binding_name = f"qsys-gateway-tokenreview:{watched}:hall"
    rbac, v1 = client.RbacAuthorizationV1Api(cluster.api), client.CoreV1Api(cluster.api)
    apps = client.AppsV1Api(cluster.api)
    scheduler = {"name": "scheduler", "serviceAccount": {"name": "room-scheduler"}}
    panel = {"name": "panel"}

    def reviews() -> bool:
        return can_i(admin, "create", "tokenreviews.authentication.k8s.io", f"--as={gateway_user}")

    def pod_spec() -> client.V1PodSpec:
        dep = apps.read_namespaced_deployment("hall-gateway", watched)
        return must(must(dep.spec).template.spec)

    def binding_exists() -> bool:
        return not _gone(rbac.read_cluster_role_binding, binding_name)

    def policy_status() -> dict[str, Any]:
        out: dict[str, Any] = get(cluster, watched, "AccessPolicy", "jobs").get("status") or {}
        return out

    with Release(cluster, [f"watchNamespaces={{{watched}}}"]) as release:
        dep = _available(release, 1)
        op = _chart_process(dep, release.token_kubeconfig(tmp_path), tmp_path / "op.log")
        with op:
            create(cluster, watched, core_body("hall", 1710))
            create(cluster, watched, policy_body("jobs", "hall", [panel]))
            wait_condition(cluster, watched, "AccessPolicy", "jobs", "Ready", "True", TIMEOUT_S)
            # Without a ServiceAccount subject: no identity, no API access.
            assert pod_spec().automount_service_account_token is False
            assert pod_spec().service_account_name in (None, "default")
            assert _gone(v1.read_namespaced_service_account, "hall-gateway", watched)
            assert _gone(rbac.read_cluster_role_binding, binding_name)
            assert not reviews()
            core = get(cluster, watched, "QSysCore", "hall")
            assert (
                core["status"]["gateway"]["serviceAccountAudience"] == f"hall-gateway.{watched}.svc"
            )

            # The API server refuses a subject with two credentials (CEL).
            twice = {**scheduler, "tokenSecretRef": {"name": "t"}}
            with pytest.raises(ApiException) as refused:
                create(cluster, watched, policy_body("bad", "hall", [twice]))
            assert refused.value.status == 422
            assert "set no tokenSecretRef or sourceCIDRs" in str(refused.value.body)

            patch(
                cluster, watched, "AccessPolicy", "jobs", {"spec": {"subjects": [scheduler, panel]}}
            )
            wait_for("the TokenReview ClusterRoleBinding", binding_exists, timeout=TIMEOUT_S)
            binding = rbac.read_cluster_role_binding(binding_name)
            assert binding.role_ref.name == f"{release.fullname}-gateway-tokenreview"
            assert [(s.kind, s.name, s.namespace) for s in must(binding.subjects)] == [
                ("ServiceAccount", "hall-gateway", watched)
            ]
            assert must(binding.metadata).owner_references is None
            account = v1.read_namespaced_service_account("hall-gateway", watched)
            owners = must(must(account.metadata).owner_references)
            assert [o.kind for o in owners] == ["QSysCore"]
            wait_for(
                "gateway pods run as hall-gateway",
                lambda: pod_spec().service_account_name == "hall-gateway",
            )
            assert pod_spec().automount_service_account_token is True
            assert reviews()
            # The gateway's identity may review tokens and do nothing else.
            for denied in (
                ("get", "secrets", "-n", watched),
                ("list", "pods", "-n", watched),
                ("create", "tokenrequests", "-n", watched),
                ("create", "subjectaccessreviews.authorization.k8s.io"),
            ):
                assert not can_i(admin, *denied, f"--as={gateway_user}"), denied

            wait_condition(cluster, watched, "AccessPolicy", "jobs", "Ready", "True", TIMEOUT_S)

            def named() -> dict[str, Any] | None:
                status = policy_status()
                return status if status.get("serviceAccounts") else None

            status = wait_for("serviceAccounts in the policy status", named)
            assert status["serviceAccounts"] == {
                "scheduler": f"system:serviceaccount:{watched}:room-scheduler"
            }
            assert status["tokenSecrets"] == {"panel": "jobs-panel-token"}
            assert _gone(v1.read_namespaced_secret, "jobs-scheduler-token", watched)
            config = must(secret_text(cluster.api, watched, "hall-gateway-config", "gateway.yaml"))
            assert f"serviceAccount: system:serviceaccount:{watched}:room-scheduler" in config
            assert f"audience: hall-gateway.{watched}.svc" in config

            api_server = _api_server_endpoints(cluster)
            if api_server:
                # The API server publishes its endpoints (the real node's control plane):
                # the gateways may reach exactly those for their TokenReviews.
                wanted = {
                    "to": [
                        {"ipBlock": {"cidr": f"{a}/32"}} for a in sorted({a for a, _ in api_server})
                    ],
                    "ports": [
                        {"port": p, "protocol": "TCP"} for p in sorted({p for _, p in api_server})
                    ],
                }

                def egress() -> list[dict[str, Any]] | None:
                    policy = client.NetworkingV1Api(cluster.api).read_namespaced_network_policy(
                        "hall-gateway", watched
                    )
                    rules = [
                        cast(Any, cluster.api).sanitize_for_serialization(e)
                        for e in must(policy.spec).egress or []
                    ]
                    return rules if wanted in rules else None

                wait_for("API server egress in the NetworkPolicy", egress, timeout=TIMEOUT_S)
            else:
                # kwok's control plane publishes no API server endpoints (endpoint
                # reconciler off): the core says why its gateways cannot review tokens.
                def noted() -> str | None:
                    ready = condition(get(cluster, watched, "QSysCore", "hall"), "Ready")
                    message = str(ready.get("message", ""))
                    return message if "EndpointSlice default/kubernetes" in message else None

                message = wait_for("the Ready note", noted, timeout=TIMEOUT_S)
                assert "ServiceAccount tokens are refused" in message

            # Tampering is undone: the binding is re-created.
            rbac.delete_cluster_role_binding(binding_name)
            wait_for("the binding re-created", binding_exists, timeout=TIMEOUT_S)

            # The last ServiceAccount subject removed: binding and ServiceAccount go.
            patch(cluster, watched, "AccessPolicy", "jobs", {"spec": {"subjects": [panel]}})
            wait_for("the binding deleted", lambda: not binding_exists(), timeout=TIMEOUT_S)
            wait_for(
                "the ServiceAccount deleted",
                lambda: _gone(v1.read_namespaced_service_account, "hall-gateway", watched),
                timeout=TIMEOUT_S,
            )
            assert pod_spec().automount_service_account_token is False
            assert pod_spec().service_account_name in (None, "default")
            assert not reviews()
            wait_for("serviceAccounts emptied", lambda: not policy_status().get("serviceAccounts"))

            # The core deleted while a binding exists: the binding goes with it.
            patch(cluster, watched, "AccessPolicy", "jobs", {"spec": {"subjects": [scheduler]}})
            wait_for("binding again", binding_exists, timeout=TIMEOUT_S)
            client.CustomObjectsApi(cluster.api).delete_namespaced_custom_object(
                "qsys.dev", "v1alpha1", watched, "qsyscores", "hall"
            )
            wait_for(
                "the binding deleted with the core", lambda: not binding_exists(), timeout=TIMEOUT_S
            )
            _no_api_refusals(op.output())


CRDS = ("qsyscores.qsys.dev", "accesspolicies.qsys.dev", "kopfpeerings.kopf.dev")


def test_release_owns_the_crds_and_uninstall_keeps_them(cluster: Cluster) -> None:
    """The chart's default: the CRDs are the release's (so `helm upgrade` upgrades them)
    and stay after `helm uninstall`."""
    ext = client.ApiextensionsV1Api(cluster.api)
    try:
        with Release(cluster, [], own_crds=True) as release:
            for name in CRDS:
                meta = must(ext.read_custom_resource_definition(name).metadata)
                annotations = meta.annotations or {}
                assert annotations.get("meta.helm.sh/release-name") == release.name, name
                assert annotations.get("helm.sh/resource-policy") == "keep", name
                assert (meta.labels or {}).get("app.kubernetes.io/managed-by") == "Helm", name
            release_name = release.name
        for name in CRDS:
            crd = ext.read_custom_resource_definition(name)
            assert must(crd.metadata).deletion_timestamp is None, name
        history = _run(
            [pinned_tool("helm", "helm"), "status", release_name, "-n", release.namespace],
            release.env,
            check=False,
        )
        assert history.returncode != 0, "the release is still installed"
    finally:
        # Back to the shared, unowned CRDs the other tests expect.
        apply_crds(cluster.api, REPO / "crds")
