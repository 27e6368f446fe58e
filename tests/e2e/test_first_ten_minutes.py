"""The first ten minutes of a new user, on the real node: `helm install` of the chart with
its defaults (cluster-wide, the published image names the node holds), then
`kubectl apply -f examples/` (the Core simulator as a Deployment and Service, the QSysCore,
the AccessPolicy and the panel's token Secret) reaches Ready=True within two minutes.

On that installation: the example token calls the Core; generated tokens survive the
AccessPolicy being deleted and re-created (GitOps) while a Secret a tenant made is never
adopted; the chart wrote nothing into `default`; the operator's ServiceAccount cannot
change or delete a ClusterRoleBinding it did not create; and `kubectl qsys`, installed
from its wheel into a fresh virtualenv, reports the examples' state.

The tests share one installation (module scope) and run in file order.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from node_support import (
    CHART,
    CHART_TIMEOUT_S,
    helm,
    host_call,
    images,
    node_images,
    real_namespace,
    tool,
    wait_pods_ready,
)
from operator_support import condition, get, wait_condition

from qsys_testkit.checkout import REPO
from qsys_testkit.cluster import Cluster, must, wait_for

pytestmark = [
    pytest.mark.node_exclusive,
    pytest.mark.e2e,
    pytest.mark.usefixtures("real_node"),
    pytest.mark.tools("helm"),
]

READY_WITHIN_S = 120
CORE = "auditorium"
POLICY = "auditorium-operators"
AGENT_SECRET = f"{POLICY}-ai-agent-token"
GATEWAY_SELECTOR = f"app.kubernetes.io/instance={CORE},app.kubernetes.io/name=qsys-gateway"
EXAMPLES = REPO / "examples"
PANEL_TOKEN = yaml.safe_load((EXAMPLES / "room-101-panel-token.yaml").read_text())["stringData"][
    "token"
]
RELOAD_S = 150
"""Gateway pods reload their config when the kubelet refreshes the Secret volume (about a
minute on this node's sync period) plus the operator's render."""


@dataclass
class Installed:
    cluster: Cluster
    release: str
    release_ns: str
    ns: str
    """Where examples/ was applied (the user's namespace)."""
    ready_after_s: float
    log_dir: Path

    @property
    def service_account(self) -> str:
        return f"system:serviceaccount:{self.release_ns}:{self.release}-qsys-operator"

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(tool("kube", "kubectl")), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "KUBECONFIG": self.cluster.kubeconfig},
        )
        if check:
            assert result.returncode == 0, f"kubectl {args}: {result.stdout}{result.stderr}"
        return result

    def call(self, token: str, method: str = "StatusGet") -> int:
        """HTTP status of one JSON-RPC call through the gateway Service (from the node)."""
        return host_call(self.cluster, self.ns, f"{CORE}-gateway", token, method)

    def steady(self, token: str, calls: int = 12) -> bool | None:
        """True when `calls` calls in a row are answered (both pods, most likely)."""
        return all(self.call(token) == 200 for _ in range(calls)) or None

    def secret(self, name: str) -> client.V1Secret:
        return client.CoreV1Api(self.cluster.api).read_namespaced_secret(name, self.ns)


@contextlib.contextmanager
def chart_defaults(cluster: Cluster, release: str, ns: str) -> Iterator[None]:
    """`helm install` with no value set: what a new user types. The session's cluster has
    the CRDs already (applied from crds/), so this release takes them over, as a user's
    first install over hand-applied CRDs would (docs/install.md "Upgrade")."""
    timeout = f"{CHART_TIMEOUT_S}s"
    args = ("-n", ns, "--take-ownership", "--wait", "--timeout", timeout)
    done = helm(cluster, "install", release, str(CHART), *args)
    assert "wait qsyscore/auditorium --for=condition=Ready" in done.stdout  # NOTES.txt
    try:
        yield
    finally:
        helm(cluster, "uninstall", release, "-n", ns, "--wait", "--timeout", "90s", check=False)


@dataclass
class PluginBuild:
    """hack/plugin_dist.py building the plugin's wheel into a fresh virtualenv."""

    proc: subprocess.Popen[bytes]
    venv: Path
    log: Path


@pytest.fixture(scope="module", autouse=True)
def plugin_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PluginBuild]:
    """Started with the module, so that it runs while the tests before the plugin's wait
    on the cluster; that test waits for it. uv installs the wheel (pip took 32 s of an idle
    machine's CPU, 2 min of wall time beside the run's start, all of it inside this file's
    exclusive hold on the node); tests/integration/test_plugin_dist.py installs it with pip."""
    root = tmp_path_factory.mktemp("plugin")
    log = root / "build.log"
    script = REPO / "hack" / "plugin_dist.py"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, str(script), str(root / "dist")),
                *("--venv", str(root / "venv"), "--installer", "uv"),
            ],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield PluginBuild(proc, root / "venv", log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def installed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    refs = images()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    published = {f"ghcr.io/qsys-operator/{c}:{chart['appVersion']}" for c in refs} & set(
        refs.values()
    )
    missing = published - node_images(cluster)
    if len(published) < 3 or missing:
        pytest.fail(
            f"the real node lacks the published image names {sorted(missing or published)}:"
            " `make images`, then restart the cluster",
            pytrace=False,
        )
    with contextlib.ExitStack() as stack:
        release_ns = stack.enter_context(real_namespace(cluster))
        release = f"first-{release_ns.rsplit('-', 1)[1]}"
        stack.enter_context(chart_defaults(cluster, release, release_ns))
        # Deleted while the operator still runs (its namespace after the release).
        ns = stack.enter_context(real_namespace(cluster))
        inst = Installed(cluster, release, release_ns, ns, 0.0, tmp_path_factory.mktemp("first"))
        started = time.monotonic()
        inst.kubectl("apply", "-n", ns, "-f", str(EXAMPLES))
        wait_condition(cluster, ns, "QSysCore", CORE, "Ready", "True", timeout=READY_WITHIN_S)
        inst.ready_after_s = time.monotonic() - started
        print(f"kubectl apply -f examples/ -> Ready=True: {inst.ready_after_s:.1f}s")
        yield inst


def test_examples_reach_ready_within_two_minutes(installed: Installed) -> None:
    assert installed.ready_after_s < READY_WITHIN_S
    core = get(installed.cluster, installed.ns, "QSysCore", CORE)
    assert condition(core, "CoreConnected")["status"] == "True"
    assert len(wait_pods_ready(installed.cluster, installed.ns, GATEWAY_SELECTOR, 2)) == 2
    wait_condition(installed.cluster, installed.ns, "AccessPolicy", POLICY, "Ready", "True")
    # The example's own token (the Secret in examples/) is accepted, a wrong one is not.
    assert wait_for("the panel's call answered", lambda: installed.call(PANEL_TOKEN) == 200 or None)
    assert installed.call("x" * 43) == 401


def _token(secret: client.V1Secret) -> str:
    return base64.b64decode(must(secret.data)["token"]).decode()


def _controller(secret: client.V1Secret) -> str | None:
    refs = must(secret.metadata).owner_references or []
    return next((r.uid for r in refs if r.controller), None)


def _policy_uid(installed: Installed) -> str:
    uid: str = get(installed.cluster, installed.ns, "AccessPolicy", POLICY)["metadata"]["uid"]
    return uid


def _delete_policy(installed: Installed) -> None:
    """As Argo CD prunes: foreground deletion, then wait until it is gone."""
    custom = client.CustomObjectsApi(installed.cluster.api)
    custom.delete_namespaced_custom_object(
        "qsys.dev",
        "v1alpha1",
        installed.ns,
        "accesspolicies",
        POLICY,
        body=client.V1DeleteOptions(propagation_policy="Foreground"),
    )

    def gone() -> bool:
        try:
            get(installed.cluster, installed.ns, "AccessPolicy", POLICY)
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for("the AccessPolicy gone", gone, 60)


def test_generated_tokens_survive_the_policy_being_deleted_and_recreated(
    installed: Installed,
) -> None:
    before = installed.secret(AGENT_SECRET)
    token, first_uid = _token(before), _policy_uid(installed)
    assert _controller(before) == first_uid
    assert wait_for("the agent's call answered", lambda: installed.call(token) == 200 or None)

    # Prune and re-sync: deleted (foreground, as Argo CD prunes), then applied again.
    _delete_policy(installed)
    kept = installed.secret(AGENT_SECRET)
    assert _token(kept) == token
    assert _controller(kept) is None  # the core still owns it
    wait_for("the agent refused", lambda: installed.call(token) == 401 or None, RELOAD_S)
    installed.kubectl("apply", "-n", installed.ns, "-f", str(EXAMPLES / "accesspolicy.yaml"))
    wait_condition(installed.cluster, installed.ns, "AccessPolicy", POLICY, "Ready", "True")
    second_uid = _policy_uid(installed)
    assert second_uid != first_uid
    after = installed.secret(AGENT_SECRET)
    assert _token(after) == token
    assert _controller(after) == second_uid
    wait_for("the same token on every pod", lambda: installed.steady(token), RELOAD_S)

    # Replace (delete and create at once, as `argocd app sync --replace --force` does):
    # the old owner reference may still be there when the new policy is seen.
    installed.kubectl(
        "replace", "--force", "-n", installed.ns, "-f", str(EXAMPLES / "accesspolicy.yaml")
    )
    wait_for(
        "the replaced policy owns the token",
        lambda: _controller(installed.secret(AGENT_SECRET)) == _policy_uid(installed) or None,
        60,
    )
    assert _token(installed.secret(AGENT_SECRET)) == token
    wait_condition(installed.cluster, installed.ns, "AccessPolicy", POLICY, "Ready", "True")
    # The replace left the policy absent for a moment, and a pod may have loaded that
    # config: its subjects are refused there until the pod reloads (docs/security.md).
    wait_for("still answered on every pod", lambda: installed.steady(token), RELOAD_S)
    assert installed.steady(PANEL_TOKEN)


def test_a_secret_the_operator_did_not_generate_is_never_adopted(installed: Installed) -> None:
    core_api = client.CoreV1Api(installed.cluster.api)
    proof = must(must(installed.secret(AGENT_SECRET).metadata).annotations)["qsys.dev/token-proof"]
    chosen = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    for subject, marks in (("intruder", None), ("copycat", {"qsys.dev/token-proof": proof})):
        core_api.create_namespaced_secret(
            installed.ns,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=f"{POLICY}-{subject}-token", annotations=marks),
                string_data={"token": chosen},
            ),
        )
    patch = [
        {"op": "add", "path": "/spec/subjects/-", "value": {"name": "intruder"}},
        {"op": "add", "path": "/spec/subjects/-", "value": {"name": "copycat"}},
    ]
    installed.kubectl(
        "patch", "accesspolicy", POLICY, "-n", installed.ns, "--type=json", "-p", json.dumps(patch)
    )

    def refused() -> str | None:
        ready = condition(get(installed.cluster, installed.ns, "AccessPolicy", POLICY), "Ready")
        message = str(ready.get("message", ""))
        return message if "intruder" in message and "copycat" in message else None

    message = wait_for("both subjects refused", refused, 60)
    assert "not generated for" in message
    assert chosen not in message
    for subject in ("intruder", "copycat"):
        secret = installed.secret(f"{POLICY}-{subject}-token")
        assert must(secret.metadata).owner_references is None
        assert _token(secret) == chosen  # untouched
    # A valid token is admitted even while its source is throttled for earlier failures
    # of this module's calls, so 429 proves the refusal as well as 401 does.
    assert installed.call(chosen) in (401, 429)
    # The other subjects keep working meanwhile.
    assert installed.call(PANEL_TOKEN) == 200


def test_the_chart_wrote_nothing_into_default(installed: Installed) -> None:
    release = installed.release
    rbac = client.RbacAuthorizationV1Api(installed.cluster.api)
    core = client.CoreV1Api(installed.cluster.api)
    selector = f"app.kubernetes.io/instance={release}"
    for listing in (
        rbac.list_namespaced_role,
        rbac.list_namespaced_role_binding,
        core.list_namespaced_secret,
        core.list_namespaced_config_map,
        core.list_namespaced_service_account,
        core.list_namespaced_service,
    ):
        assert listing("default", label_selector=selector).items == [], listing.__name__
    manifest = helm(installed.cluster, "get", "manifest", release, "-n", installed.release_ns)
    namespaces = {
        d["metadata"].get("namespace") for d in yaml.safe_load_all(manifest.stdout) if d
    } - {None}
    assert namespaces == {installed.release_ns}


def _foreign_binding(cluster: Cluster, name: str, role: str, labels: dict[str, str]) -> None:
    client.RbacAuthorizationV1Api(cluster.api).create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="nobody", namespace="default")
            ],
        )
    )


def test_the_operator_cannot_change_or_delete_bindings_it_did_not_create(
    installed: Installed,
) -> None:
    sa = installed.service_account

    def can(*args: str) -> bool:
        out = installed.kubectl("auth", "can-i", *args, f"--as={sa}", check=False)
        assert out.stdout.strip() in ("yes", "no"), out.stderr
        return out.stdout.strip() == "yes"

    # RBAC cannot name per-core bindings in advance: delete is granted by RBAC...
    assert can("delete", "clusterrolebindings")
    # ...but binding any role but the chart's TokenReview role is not,
    assert not can("bind", "clusterroles/cluster-admin")
    assert can("bind", f"clusterroles/{installed.release}-qsys-operator-gateway-tokenreview")
    # and the admission policy refuses the rest, at the API server.
    rbac = client.RbacAuthorizationV1Api(installed.cluster.api)
    suffix = uuid.uuid4().hex[:6]
    foreign = f"e2e-foreign-{suffix}"
    own = f"qsys-gateway-tokenreview:e2e-{suffix}:hall"
    managed = {"app.kubernetes.io/managed-by": "qsys-operator"}
    _foreign_binding(installed.cluster, foreign, "view", {})
    _foreign_binding(
        installed.cluster, own, f"{installed.release}-qsys-operator-gateway-tokenreview", managed
    )
    # A look-alike: the operator's label and prefix, but another role.
    lookalike = f"qsys-gateway-tokenreview:e2e-{suffix}:evil"
    _foreign_binding(installed.cluster, lookalike, "view", managed)
    # Someone else's binding to the very role the operator may bind: RBAC lets the
    # operator update and delete it; only the admission policy stops it.
    same_role = f"e2e-foreign-tokenreview-{suffix}"
    _foreign_binding(
        installed.cluster, same_role, f"{installed.release}-qsys-operator-gateway-tokenreview", {}
    )
    try:

        def as_operator(*args: str) -> subprocess.CompletedProcess[str]:
            return installed.kubectl(*args, f"--as={sa}", "--dry-run=server", check=False)

        refusal = "may change or delete only the TokenReview ClusterRoleBindings it created"

        def refused(*args: str) -> str | None:
            out = as_operator(*args)
            return out.stderr if out.returncode != 0 and refusal in out.stderr else None

        wait_for("the guard active", lambda: refused("delete", "clusterrolebinding", foreign), 60)
        for name in (foreign, lookalike, same_role, "cluster-admin"):
            assert refused("delete", "clusterrolebinding", name), name
        assert refused("label", "clusterrolebinding", same_role, "x=y")
        # Updates of bindings to roles it may not bind: RBAC's escalation check refuses
        # them before admission.
        for name in (foreign, lookalike, "cluster-admin"):
            out = as_operator("label", "clusterrolebinding", name, "x=y")
            assert out.returncode != 0
            assert refusal in out.stderr or "not currently held" in out.stderr, out.stderr
        # Its own kind of binding it may still delete (server dry run: nothing deleted).
        out = as_operator("delete", "clusterrolebinding", own)
        assert out.returncode == 0, out.stderr
        rbac.read_cluster_role_binding("cluster-admin")
    finally:
        for name in (foreign, own, lookalike, same_role):
            rbac.delete_cluster_role_binding(name)


def test_the_plugin_from_its_wheel_reports_the_examples(
    installed: Installed, plugin_build: PluginBuild, tmp_path: Path
) -> None:
    rc = plugin_build.proc.wait(timeout=900)
    assert rc == 0, plugin_build.log.read_text(errors="replace")[-3000:]
    fresh = plugin_build.venv
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))} | {
        "KUBECONFIG": installed.cluster.kubeconfig,
        "PATH": os.pathsep.join([str(fresh / "bin"), "/usr/bin", "/bin"]),
    }

    def plugin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(tool("kube", "kubectl")), "qsys", *args, "-n", installed.ns],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    status = plugin("status", CORE, "-o", "json")
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)["items"]
    assert row["ready"] == "True", row
    allowed = plugin("can-i", POLICY, "room-101-panel", "StatusGet")
    assert (allowed.returncode, allowed.stdout.split()[0]) == (0, "yes"), allowed.stdout
    denied = plugin(
        "can-i", POLICY, "room-101-panel", "Component.Set", "Room101 Zone1.gain", "-100"
    )
    assert (denied.returncode, denied.stdout.split()[0]) == (1, "no"), denied.stdout
