"""ServiceAccount subjects on real pods: the chart-installed operator (its
image, its RBAC), the Core simulator pod, gateway pods started by the kubelet, and
client pods that present their projected ServiceAccount token to the gateway Service.

The gateway checks each token with the real API server's TokenReview, under the
ServiceAccount, ClusterRoleBinding and NetworkPolicy egress the operator renders only
while some subject is a ServiceAccount. One installation (module scope); the tests
run in file order: no identity, admitted, refused (other account, other audience,
invalidated token), identity removed with the last ServiceAccount subject.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from node_support import (
    create,
    host_call,
    images,
    is_ready,
    operator_release,
    real_namespace,
    restricted_container,
    simulated_core,
    start_simulator,
    wait_pods_ready,
)
from operator_support import get, patch, wait_condition

from qsys_protocol.config import TokenReviewConfig
from qsys_testkit.checkout import pinned_tool
from qsys_testkit.cluster import Cluster, can_i, must, wait_for, wait_gone

pytestmark = [
    pytest.mark.node_lane("c"),
    pytest.mark.e2e,
    pytest.mark.usefixtures("real_node"),
    pytest.mark.tools("helm"),
]

CORE = "hall"
GATEWAY = f"{CORE}-gateway"
GATEWAY_SELECTOR = f"app.kubernetes.io/instance={CORE},app.kubernetes.io/name=qsys-gateway"
POLICY = "jobs"
ACCOUNT = "room-scheduler"
GAIN = {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain"}]}
OTHER_GAIN = {"Name": "Room102 Zone1 Gain", "Controls": [{"Name": "gain"}]}
PANEL = {"name": "panel"}
SCHEDULER = {"name": "scheduler", "serviceAccount": {"name": ACCOUNT}}
RULES = [
    {"methods": ["StatusGet"]},
    {"methods": ["Component.Get"], "components": [GAIN["Name"]], "controls": ["gain"]},
]
TOKEN_DIR = "/var/run/secrets/qsys"
TIMEOUT_S = 180
CACHE_S = int(TokenReviewConfig.model_fields["cacheSeconds"].default)
"""The gateway's default tokenReview.cacheSeconds (the operator renders the default): how
long an admitted token may still be admitted after the API server stopped accepting it."""

CLIENT = """
import json, sys, urllib.error, urllib.request
url = sys.argv[1]
token = open(sys.argv[3]).read().strip()
out = []
for i, (method, params) in enumerate(json.loads(sys.argv[2])):
    body = json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params})
    req = urllib.request.Request(url, data=body.encode(), headers={
        "Authorization": "Bearer " + token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            out.append([r.status, json.loads(r.read())])
    except urllib.error.HTTPError as exc:
        out.append([exc.code, json.loads(exc.read() or b"{}")])
    except OSError as exc:  # not connected (yet): the test asks again
        out.append([-1, str(exc)])
print(json.dumps(out))
"""


@dataclass
class Stack:
    cluster: Cluster
    ns: str
    release: str

    @property
    def admin(self) -> Path:
        return Path(self.cluster.kubeconfig)

    @property
    def binding(self) -> str:
        return f"qsys-gateway-tokenreview:{self.ns}:{CORE}"

    @property
    def gateway_user(self) -> str:
        return f"system:serviceaccount:{self.ns}:{GATEWAY}"

    @property
    def url(self) -> str:
        return f"http://{GATEWAY}.{self.ns}.svc.cluster.local:8080/v1/rpc"

    def audience(self) -> str:
        status = get(self.cluster, self.ns, "QSysCore", CORE).get("status") or {}
        audience = (status.get("gateway") or {}).get("serviceAccountAudience")
        assert audience == f"{GATEWAY}.{self.ns}.svc", status
        return str(audience)

    def may_review_tokens(self) -> bool:
        resource = "tokenreviews.authentication.k8s.io"
        return can_i(self.admin, "create", resource, f"--as={self.gateway_user}")

    def binding_exists(self) -> bool:
        try:
            client.RbacAuthorizationV1Api(self.cluster.api).read_cluster_role_binding(self.binding)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def gateway_pods(self) -> list[client.V1Pod]:
        pods = client.CoreV1Api(self.cluster.api).list_namespaced_pod(
            self.ns, label_selector=GATEWAY_SELECTOR
        )
        return [p for p in pods.items if must(p.metadata).deletion_timestamp is None]

    def gateways_settled(self, account: str | None) -> bool:
        """Every gateway pod Ready, from the current template, running as `account` (None:
        the namespace default) with an API token mounted exactly when account is set; no old
        pod left terminating (its preStop keeps it serving the config it had a moment)."""
        dep = client.AppsV1Api(self.cluster.api).read_namespaced_deployment(GATEWAY, self.ns)
        status = must(dep.status)
        every = client.CoreV1Api(self.cluster.api).list_namespaced_pod(
            self.ns, label_selector=GATEWAY_SELECTOR
        )
        pods = self.gateway_pods()
        if (
            len(every.items) != len(pods)
            or status.updated_replicas != must(dep.spec).replicas
            or status.ready_replicas != status.replicas
            or len(pods) != must(dep.spec).replicas
        ):
            return False
        for pod in pods:
            spec = must(pod.spec)
            api_token = any(
                v.projected and v.name.startswith("kube-api-access") for v in spec.volumes or []
            )
            if not is_ready(pod) or api_token != (account is not None):
                return False
            if spec.service_account_name != (account or "default"):
                return False
        return True

    def client_pod(self, name: str, account: str, audience: str) -> dict[str, Any]:
        """A pod running as account with its token projected for audience (10 min, the
        TokenRequest minimum) at TOKEN_DIR/token, and no API token of its own."""
        container = restricted_container(
            "client",
            images()["gateway"],
            ["python3", "-c", "import time; time.sleep(3600)"],
            volumeMounts=[{"name": "qsys-token", "mountPath": TOKEN_DIR, "readOnly": True}],
        )
        projected = {
            "serviceAccountToken": {
                "path": "token",
                "audience": audience,
                "expirationSeconds": 600,
            }
        }
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "sa-client"}},
            "spec": {
                "serviceAccountName": account,
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 0,
                "securityContext": {"fsGroup": 10001},
                "containers": [container],
                "volumes": [{"name": "qsys-token", "projected": {"sources": [projected]}}],
            },
        }

    def start_client(self, account: str, audience: str) -> str:
        name = f"client-{uuid.uuid4().hex[:6]}"
        create(self.cluster, self.ns, self.client_pod(name, account, audience))
        wait_for(
            f"client pod {name} Ready",
            lambda: is_ready(client.CoreV1Api(self.cluster.api).read_namespaced_pod(name, self.ns)),
            timeout=TIMEOUT_S,
        )
        return name

    def calls_from(self, pod: str, calls: list[tuple[str, Any]]) -> list[tuple[int, Any]]:
        """The calls made inside pod against the gateway Service, (HTTP status, body) each;
        again while one did not connect (kube-router programs a new pod's rules a moment
        after it is Ready)."""

        def connected() -> list[tuple[int, Any]] | None:
            out = self._exec_calls(pod, calls)
            return None if any(code == -1 for code, _ in out) else out

        return wait_for(f"calls from {pod} connected", connected, timeout=60)

    def _exec_calls(self, pod: str, calls: list[tuple[str, Any]]) -> list[tuple[int, Any]]:
        """Run the calls inside pod (kubectl exec: a python one-liner in the gateway
        image): (HTTP status or -1 when not connected, body) each."""
        kubectl = pinned_tool("kube", "kubectl")
        result = subprocess.run(
            [
                str(kubectl),
                "exec",
                "-n",
                self.ns,
                pod,
                "--",
                "python3",
                "-c",
                CLIENT,
                self.url,
                json.dumps(calls),
                f"{TOKEN_DIR}/token",
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
            env={**os.environ, "KUBECONFIG": self.cluster.kubeconfig},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return [(int(code), body) for code, body in json.loads(result.stdout)]

    def delete_pod(self, name: str) -> None:
        core = client.CoreV1Api(self.cluster.api)
        core.delete_namespaced_pod(name, self.ns, grace_period_seconds=0)
        wait_gone(f"pod {name}", lambda: core.read_namespaced_pod(name, self.ns), TIMEOUT_S)

    def host_call(self, token: str, method: str, params: Any = None) -> int:
        return host_call(self.cluster, self.ns, GATEWAY, token, method, params)


@pytest.fixture(scope="module")
def stack(cluster: Cluster) -> Iterator[Stack]:
    with real_namespace(cluster) as ns, operator_release(cluster, ns) as release:
        start_simulator(cluster, ns)
        core = client.CoreV1Api(cluster.api)
        for account in (ACCOUNT, "intruder"):
            core.create_namespaced_service_account(
                ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=account))
            )
        custom = client.CustomObjectsApi(cluster.api)
        custom.create_namespaced_custom_object(
            "qsys.dev", "v1alpha1", ns, "qsyscores", simulated_core(CORE, {"replicas": 1})
        )
        policy = {
            "apiVersion": "qsys.dev/v1alpha1",
            "kind": "AccessPolicy",
            "metadata": {"name": POLICY},
            "spec": {"coreRef": {"name": CORE}, "subjects": [PANEL], "rules": RULES},
        }
        custom.create_namespaced_custom_object("qsys.dev", "v1alpha1", ns, "accesspolicies", policy)
        wait_pods_ready(cluster, ns, GATEWAY_SELECTOR, 1, timeout=TIMEOUT_S)
        wait_condition(cluster, ns, "QSysCore", CORE, "CoreConnected", "True", TIMEOUT_S)
        yield Stack(cluster, ns, release)


def test_without_service_account_subjects_the_gateway_has_no_identity(stack: Stack) -> None:
    wait_for("gateway pods settled", lambda: stack.gateways_settled(None), timeout=TIMEOUT_S)
    for pod in stack.gateway_pods():
        spec = must(pod.spec)
        assert spec.automount_service_account_token is False
        assert not [v for v in spec.volumes or [] if v.name.startswith("kube-api-access")]
    assert not stack.binding_exists()
    assert not stack.may_review_tokens()
    # The audience is published before any ServiceAccount subject exists.
    assert stack.audience()


def test_a_pod_of_the_service_account_is_admitted_as_its_subject(stack: Stack) -> None:
    patch(
        stack.cluster,
        stack.ns,
        "AccessPolicy",
        POLICY,
        {"spec": {"subjects": [PANEL, SCHEDULER]}},
    )
    started = time.monotonic()
    wait_for("the TokenReview binding", stack.binding_exists, timeout=TIMEOUT_S)
    wait_for("gateways with an identity", lambda: stack.gateways_settled(GATEWAY), TIMEOUT_S)
    print(
        f"subject added -> gateways rolled with their identity: {time.monotonic() - started:.1f}s"
    )
    assert stack.may_review_tokens()
    np = client.NetworkingV1Api(stack.cluster.api).read_namespaced_network_policy(GATEWAY, stack.ns)
    slice_ = client.DiscoveryV1Api(stack.cluster.api).read_namespaced_endpoint_slice(
        "kubernetes", "default"
    )
    api_cidrs = sorted({f"{a}/32" for e in slice_.endpoints or [] for a in e.addresses})
    api_ports = sorted({must(p.port) for p in slice_.ports or []})
    assert api_cidrs
    assert api_ports
    egress = [
        (
            [must(peer.ip_block).cidr if peer.ip_block else None for peer in rule.to or []],
            [port.port for port in rule.ports or []],
        )
        for rule in must(np.spec).egress or []
    ]
    assert (api_cidrs, api_ports) in egress, egress

    pod = stack.start_client(ACCOUNT, stack.audience())
    calls = [
        ("StatusGet", {}),
        ("Component.Get", GAIN),
        ("Component.Get", OTHER_GAIN),
    ]

    def admitted() -> list[tuple[int, Any]] | None:
        # Right after the rollout kube-router may still be programming the new gateway
        # pods' egress to the API server: a review without an answer refuses (fail closed).
        out = stack.calls_from(pod, calls)
        return out if out[0][0] == 200 else None

    started = time.monotonic()
    status, got, other = wait_for("the scheduler admitted", admitted, timeout=60)
    print(f"first admitted call {time.monotonic() - started:.1f}s after the client was Ready")
    assert status[1]["result"]["State"], status
    assert got[0] == 200, got
    assert got[1]["result"]["Controls"][0]["Name"] == "gain", got
    # Admitted as the subject `scheduler`: its policy's rules apply.
    assert other[0] == 403, other
    assert other[1]["error"]["code"] == -32003, other
    stack.delete_pod(pod)


def test_a_pod_of_another_service_account_is_refused(stack: Stack) -> None:
    pod = stack.start_client("intruder", stack.audience())
    try:
        ((code, body),) = stack.calls_from(pod, [("StatusGet", {})])
        assert code == 401, body
    finally:
        stack.delete_pod(pod)


def test_a_token_for_another_audience_is_refused(stack: Stack) -> None:
    pod = stack.start_client(ACCOUNT, "https://kubernetes.default.svc.cluster.local")
    try:
        ((code, body),) = stack.calls_from(pod, [("StatusGet", {})])
        assert code == 401, body
    finally:
        stack.delete_pod(pod)


def test_an_invalidated_token_is_refused_once_the_cache_expires(stack: Stack) -> None:
    """A token bound to a pod (TokenRequest, 10 min) stops working when the pod is deleted:
    at the latest after the gateway's review cache (cacheSeconds) expires."""
    pod = stack.start_client(ACCOUNT, stack.audience())
    body = client.CoreV1Api(stack.cluster.api).read_namespaced_pod(pod, stack.ns)
    request = client.CoreV1Api(stack.cluster.api).create_namespaced_service_account_token(
        ACCOUNT,
        stack.ns,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[stack.audience()],
                expiration_seconds=600,
                bound_object_ref=client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=pod, uid=must(body.metadata).uid
                ),
            )
        ),
    )
    token = must(must(request.status).token)
    assert stack.host_call(token, "StatusGet") == 200
    stack.delete_pod(pod)
    deleted = time.monotonic()
    wait_for("the token refused", lambda: stack.host_call(token, "StatusGet") == 401, CACHE_S + 30)
    waited = time.monotonic() - deleted
    print(f"token refused {waited:.1f}s after its pod was deleted (cache {CACHE_S}s)")
    assert waited <= CACHE_S + 30


def test_removing_the_last_service_account_subject_removes_the_identity(stack: Stack) -> None:
    token_pod = stack.start_client(ACCOUNT, stack.audience())
    ((code, _),) = stack.calls_from(token_pod, [("StatusGet", {})])
    assert code == 200
    patch(stack.cluster, stack.ns, "AccessPolicy", POLICY, {"spec": {"subjects": [PANEL]}})
    wait_for("the binding deleted", lambda: not stack.binding_exists(), timeout=TIMEOUT_S)
    wait_for("gateways without identity", lambda: stack.gateways_settled(None), TIMEOUT_S)
    assert not stack.may_review_tokens()
    with pytest.raises(ApiException) as missing:
        client.CoreV1Api(stack.cluster.api).read_namespaced_service_account(GATEWAY, stack.ns)
    assert missing.value.status == 404
    for pod in stack.gateway_pods():
        spec = must(pod.spec)
        assert spec.automount_service_account_token is False
        assert not [v for v in spec.volumes or [] if v.name.startswith("kube-api-access")]
    ((code, body),) = stack.calls_from(token_pod, [("StatusGet", {})])
    assert code == 401, body
    stack.delete_pod(token_pod)
