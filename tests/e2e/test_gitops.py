"""GitOps for real: the pinned Argo CD (application controller and repo server, on the host
with redis, all on loopback) installs the chart from an OCI registry on loopback (TLS from
a private CA, basic auth; the chart as `make release` packages it) and syncs a QSysCore
and an AccessPolicy from a git repository served on loopback, with the health checks of
docs/argocd loaded through argocd-cm exactly as docs/gitops.md shows them. The gateway
pods run on the real node. The Applications are docs/argocd/applications.yaml, the
registry's repository Secret and CA docs/argocd/chart-registry.yaml.

Besides Argo CD's judgement, the pinned kstatus tool (sigs.k8s.io/cli-utils, the library
behind Flux's health checks and `kubectl wait`'s conventions) judges the live objects.

The tests share one installation and run in file order: later ones change it. The last
one deletes both Applications and the CRDs and installs chart and site again as one
Application (docs/argocd/bundle.yaml).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
import yaml
from gitops_support import (
    TLS_CERTS_CM,
    ArgoCD,
    ChartRegistry,
    Repos,
    argocd,
    kubectl,
    published_chart,
    served_git,
)
from kubernetes import client
from node_support import (
    example,
    host_call,
    images,
    real_namespace,
    rpc_status,
    simulated_core,
    start_simulator,
)
from operator_support import condition, get

from qsys_testkit.checkout import REPO, pinned_tool, run_checked
from qsys_testkit.cluster import Cluster, must, wait_gone
from qsys_testkit.kube import secret_text

pytestmark = [
    pytest.mark.e2e,
    # The first test includes the module fixture: the chart and the site synced by Argo CD.
    pytest.mark.timeout(900),
    # The gateway HPA's metrics, for the drift window the first test starts.
    pytest.mark.usefixtures("real_node", "metrics_api"),
    pytest.mark.tools("argocd", "kstatus", "helm", "kube", "registry", "metrics-server"),
]

T = TypeVar("T")
APPLICATIONS = REPO / "docs" / "argocd" / "applications.yaml"
BUNDLE = REPO / "docs" / "argocd" / "bundle.yaml"
CHART_REGISTRY = REPO / "docs" / "argocd" / "chart-registry.yaml"
GITOPS_DOC = REPO / "docs" / "gitops.md"
CORE = "hall"
POLICY = "hall-operators"
SITE = "sites/hall"
SYNC_TIMEOUT_S = 300
# The issue's window: 3 minutes (18 full comparisons at --app-resync 10, besides the one
# every change of a live object triggers). It runs in a thread beside the tests that
# follow the first one (DriftWatch), so it adds little wall time.
DRIFT_WINDOW_S = 180
CRDS = ("qsyscores.qsys.dev", "accesspolicies.qsys.dev")
CEL_MESSAGE = "minReplicas must not exceed maxReplicas"
AUTOSCALING = {"minReplicas": 2, "maxReplicas": 3, "targetCPUUtilizationPercentage": 80}
ROLLOUT = {"example.org/rollout": "2"}
# Gateway pods reload their config when the kubelet refreshes the Secret volume (about a
# minute on this node's sync period, each pod at its own moment) plus the operator's render.
RELOAD_S = 150
STREAK = 10


def argocd_cm_from_doc() -> dict[str, str]:
    """The data of the argocd-cm ConfigMap docs/gitops.md tells users to apply."""
    doc = GITOPS_DOC.read_text("utf-8")
    for block in re.findall(r"```yaml\n(.*?)```", doc, re.S):
        for body in yaml.safe_load_all(block):
            if isinstance(body, dict) and body.get("metadata", {}).get("name") == "argocd-cm":
                data: dict[str, str] = body["data"]
                return data
    raise AssertionError("docs/gitops.md shows no argocd-cm ConfigMap")


def site_core(**gateway: Any) -> dict[str, Any]:
    body = simulated_core(CORE, {"replicas": 2, "autoscaling": AUTOSCALING, **gateway})
    body["spec"]["gateway"]["resources"] = {"requests": {"cpu": "20m", "memory": "64Mi"}}
    return body


ROLLED = site_core(podAnnotations=ROLLOUT)


def site_files(core: dict[str, Any]) -> dict[str, str]:
    policy = example("accesspolicy.yaml")
    policy["metadata"]["name"] = POLICY
    policy["spec"]["coreRef"]["name"] = CORE
    # No token in git: the operator generates the agent's token into a Secret.
    policy["spec"]["subjects"] = [{"name": "ai-agent"}]
    return {
        f"{SITE}/qsyscore.yaml": yaml.safe_dump(core, sort_keys=False),
        f"{SITE}/accesspolicy.yaml": yaml.safe_dump(policy, sort_keys=False),
    }


def chart_registry_settings(chart: ChartRegistry) -> list[dict[str, Any]]:
    """docs/argocd/chart-registry.yaml for this environment's registry: its URL and
    account in the repository Secret, its CA under its host name in argocd-tls-certs-cm."""
    secret, certs = yaml.safe_load_all(CHART_REGISTRY.read_text("utf-8"))
    registry = chart.registry
    secret["stringData"].update(
        url=chart.url, username=registry.username, password=registry.password
    )
    assert certs["metadata"]["name"] == TLS_CERTS_CM
    certs["data"] = {chart.host: registry.ca_file.read_text("utf-8")}
    return [secret, certs]


def applications(ns: str, repos: Repos, chart: ChartRegistry) -> list[dict[str, Any]]:
    """docs/argocd/applications.yaml with this environment's URLs, namespace and images."""
    project, operator, site = yaml.safe_load_all(APPLICATIONS.read_text("utf-8"))
    project["spec"]["sourceRepos"] = [chart.url, repos.git_url]
    project["spec"]["destinations"][0]["namespace"] = ns
    return [project, localized(operator, ns, repos, chart), localized(site, ns, repos, chart)]


def localized(app: dict[str, Any], ns: str, repos: Repos, chart: ChartRegistry) -> dict[str, Any]:
    """An Application of docs/argocd with this environment's URLs, namespace and images:
    its chart source (if any) from the loopback registry, its git source from the
    loopback git server."""
    refs = images()
    params = {
        "image.repository": refs["operator"].rpartition(":")[0],
        "image.tag": refs["operator"].rpartition(":")[2],
        "image.pullPolicy": "Never",
        "gatewayImage.repository": refs["gateway"].rpartition(":")[0],
        "gatewayImage.tag": refs["gateway"].rpartition(":")[2],
        "gatewayImage.pullPolicy": "Never",
        "resyncSeconds": "2",
        "gatewayProbe.cidrs": "{198.18.0.0/16}",
    }
    spec = app["spec"]
    for source in spec.get("sources") or [spec["source"]]:
        if "chart" in source:
            assert source["chart"] == chart.chart
            source["repoURL"] = chart.url
            source["targetRevision"] = chart.version
            source["helm"]["releaseName"] = f"qsys-{ns.rsplit('-', 1)[1]}"
            source["helm"]["valuesObject"]["watchNamespaces"] = [ns]
            source["helm"]["parameters"] = [{"name": k, "value": v} for k, v in params.items()]
        else:
            source["repoURL"] = repos.git_url
    spec["destination"]["namespace"] = ns
    return app


def ready_probe(argo: ArgoCD, name: str) -> Callable[[], bool | None]:
    return lambda: synced_healthy(argo.app(name)) or None


def synced_at(argo: ArgoCD, revision: str, name: str = "av-hall") -> Callable[[], bool | None]:
    """The Application synced revision and is Synced and Healthy."""

    def probe() -> bool | None:
        app = argo.app(name)
        state = (app.get("status") or {}).get("operationState") or {}
        done = state.get("phase") == "Succeeded"
        return (
            done and state.get("syncResult", {}).get("revision") == revision and synced_healthy(app)
        ) or None

    return probe


def settled(status: dict[str, Any]) -> bool:
    """Argo CD's comparison is of the revision its last sync applied, made after that sync
    succeeded: OutOfSync then is drift, not a commit still to sync, a sync under way or a
    revision the API server refused (the tests beside the watch make all three)."""
    op = status.get("operationState") or {}
    applied = (op.get("syncResult") or {}).get("revision")
    return (
        op.get("phase") == "Succeeded"
        and applied is not None
        and applied == (status.get("sync") or {}).get("revision")
        and str(status.get("reconciledAt") or "") > str(op.get("finishedAt") or "")
    )


class DriftWatch:
    """Samples both Applications every second for DRIFT_WINDOW_S, from the moment the
    gateway HPA is ScalingActive, in a thread beside the other tests: every resource or
    Application not Synced is recorded (for av-hall, whose git the tests change, in a
    settled comparison only)."""

    def __init__(self, cluster: Cluster, ns: str, argo: ArgoCD) -> None:
        self.cluster, self.ns, self.argo = cluster, ns, argo
        self.drift: list[str] = []
        self.samples = {"qsys-operator": 0, "av-hall": 0}
        """Settled comparisons seen, per Application."""
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drift-watch", daemon=True)
        self._thread.start()

    def _hpa_active(self) -> bool:
        autoscaling = client.AutoscalingV2Api(self.cluster.api)
        items = autoscaling.list_namespaced_horizontal_pod_autoscaler(self.ns).items
        conds = [c for h in items for c in (h.status and h.status.conditions) or []]
        return any(c.type == "ScalingActive" and c.status == "True" for c in conds)

    def _run(self) -> None:
        try:
            deadline = time.monotonic() + 300
            while not self._hpa_active():
                if time.monotonic() > deadline:
                    raise AssertionError("the gateway HPA never became ScalingActive")
                if self._stop.wait(1):
                    return
            deadline = time.monotonic() + DRIFT_WINDOW_S
            while time.monotonic() < deadline and not self._stop.is_set():
                for name in self.samples:
                    status = self.argo.app(name).get("status") or {}
                    # No test commits to the chart's source: every comparison counts.
                    if name == "av-hall" and not settled(status):
                        continue
                    self.samples[name] += 1
                    if (status.get("sync") or {}).get("status") != "Synced":
                        self.drift.append(f"{name}: {status.get('sync')}")
                    self.drift += [
                        f"{name}: {r.get('kind')}/{r.get('name')} {r.get('status')}"
                        for r in status.get("resources") or []
                        if r.get("status") != "Synced"
                    ]
                self._stop.wait(1)
        except BaseException as exc:  # handed to the test that joins
            self.error = exc

    def result(self) -> list[str]:
        """Wait for the window to end; what drifted in it."""
        self._thread.join(DRIFT_WINDOW_S + 330)
        if self.error is not None:
            raise self.error
        assert not self._thread.is_alive(), "the drift watch did not finish"
        return self.drift

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@dataclass
class GitOps:
    cluster: Cluster
    ns: str
    argo: ArgoCD
    repos: Repos
    chart: ChartRegistry
    drift: DriftWatch | None = None

    def watch_drift(self) -> DriftWatch:
        if self.drift is None:
            self.drift = DriftWatch(self.cluster, self.ns, self.argo)
        return self.drift

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float = SYNC_TIMEOUT_S) -> T:
        """wait_for, failing with the Applications' status and the Argo CD logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = probe()
            if got is not None:
                return got
            time.sleep(0.5)
        apps = {}
        for name in ("qsys-operator", "av-hall", "av-hall-bundle"):
            with contextlib.suppress(client.ApiException):
                apps[name] = self.argo.app(name).get("status")
        pytest.fail(
            f"timed out after {timeout:.0f}s waiting for {what}\n"
            f"{json.dumps(apps, indent=1)[-6000:]}\n{self.argo.log_tail()}",
            pytrace=False,
        )

    def core_health(self) -> dict[str, Any]:
        health: dict[str, Any] = (
            self.argo.resource(self.argo.app("av-hall"), "QSysCore", CORE).get("health") or {}
        )
        return health

    def kstatus(self, kind: str, name: str) -> dict[str, Any]:
        """The kstatus of the live object, computed by the pinned cli-utils tool."""
        live = kubectl(self.cluster, "get", "-n", self.ns, kind.lower(), name, "-o", "json")
        out = run_checked([pinned_tool("kstatus", "kstatus")], input=live, timeout=30)
        result: dict[str, Any] = json.loads(out)
        return result


def synced_healthy(app: dict[str, Any]) -> bool:
    status = app.get("status") or {}
    return (status.get("sync") or {}).get("status") == "Synced" and (
        status.get("health") or {}
    ).get("status") == "Healthy"


@pytest.fixture(scope="module")
def gitops(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitOps]:
    work = tmp_path_factory.mktemp("gitops")
    with real_namespace(cluster) as ns:
        start_simulator(cluster, ns)
        with (
            served_git(work / "repos") as repos,
            published_chart(work / "chart") as chart,
            argocd(
                cluster, work / "argocd", argocd_cm_from_doc(), chart_registry_settings(chart)
            ) as argo,
        ):
            repos.commit(site_files(site_core()), "hall: the Core and its operators")
            for body in applications(ns, repos, chart):
                argo.apply(body)
            gitops = GitOps(cluster, ns, argo, repos, chart)
            try:
                yield gitops
            finally:
                if gitops.drift is not None:
                    gitops.drift.stop()
                # The site first: its CRs go while the operator still runs.
                argo.delete_apps(["av-hall-bundle", "av-hall", "qsys-operator"])


def test_both_applications_reach_synced_and_healthy(gitops: GitOps) -> None:
    started = time.monotonic()

    def first_sync_done() -> dict[str, Any] | None:
        app = gitops.argo.app("qsys-operator")
        state = (app.get("status") or {}).get("operationState") or {}
        return app if state.get("phase") == "Succeeded" else None

    app = gitops.wait("the chart's first sync", first_sync_done)
    stale = [
        r["name"]
        for r in app["status"].get("resources") or []
        if r.get("kind") == "CustomResourceDefinition"
        and (r.get("health") or {}).get("status") != "Healthy"
    ]
    if stale:
        # docs/gitops.md "CRD health on the first install": the new CRDs' health as
        # recorded before they were Established stays until the next refresh.
        print(f"CRDs not Healthy after the first sync: {stale}; refreshing qsys-operator")
        gitops.argo.refresh("qsys-operator", "normal")
    for name in ("qsys-operator", "av-hall"):
        gitops.wait(f"Application {name} Synced and Healthy", ready_probe(gitops.argo, name))
    print(f"Applications created -> both Synced and Healthy: {time.monotonic() - started:.1f}s")
    app = gitops.argo.app("av-hall")
    # The health comes from our Lua (its Healthy message is the Ready condition's),
    # not from Argo CD's default for unknown kinds (no health at all).
    health = gitops.argo.resource(app, "QSysCore", CORE)["health"]
    assert health["status"] == "Healthy"
    assert health["message"].startswith("gateway available and connected to the Core")
    policy = gitops.argo.resource(app, "AccessPolicy", POLICY)["health"]
    assert policy == {"status": "Healthy", "message": "1 subject(s) active"}
    assert gitops.kstatus("QSysCore", CORE)["status"] == "Current"
    assert gitops.kstatus("AccessPolicy", POLICY)["status"] == "Current"
    gitops.watch_drift()
    assert_pulled_from_the_registry(gitops)


def assert_pulled_from_the_registry(gitops: GitOps) -> None:
    """The repo server pulled the chart from the registry (helm, logged as Argo CD runs
    it) after logging in with the repository Secret's account, trusting the CA that
    argocd-tls-certs-cm holds under the registry's host name; the password is in no log."""
    chart = gitops.chart
    log = gitops.argo.log("argocd-repo-server")
    ca_file = rf"--ca-file \S*/tls/{re.escape(chart.host)}\b"
    login = rf"helm registry login {re.escape(chart.url)} --username \*+ --password \*+ {ca_file}"
    assert re.search(login, log), log[-3000:]
    pulled = (
        rf"helm pull oci://{re.escape(chart.url)}/{chart.chart} --version "
        rf"{re.escape(chart.version)} --destination \S+ {ca_file}"
    )
    assert re.search(pulled, log), log[-3000:]
    for component in ("argocd-repo-server", "argocd-application-controller"):
        assert chart.registry.password not in gitops.argo.log(component), component


def test_kstatus_fails_an_invalid_secret_reference(gitops: GitOps) -> None:
    """A token Secret that does not exist: Stalled, so kstatus says Failed (Flux's health
    check stops waiting) rather than InProgress until its timeout."""
    body = copy.deepcopy(example("accesspolicy.yaml"))
    body["metadata"]["name"] = "broken-panel"
    body["spec"]["coreRef"]["name"] = CORE
    body["spec"]["subjects"] = [
        {"name": "lobby-panel", "tokenSecretRef": {"name": "no-such-secret", "key": "token"}}
    ]
    custom = client.CustomObjectsApi(gitops.cluster.api)
    custom.create_namespaced_custom_object(
        "qsys.dev", "v1alpha1", gitops.ns, "accesspolicies", body
    )
    try:

        def failed() -> dict[str, Any] | None:
            result = gitops.kstatus("AccessPolicy", "broken-panel")
            return result if result["status"] == "Failed" else None

        result = gitops.wait("kstatus Failed for broken-panel", failed, timeout=60)
        assert "no-such-secret" in result["message"]
        live = get(gitops.cluster, gitops.ns, "AccessPolicy", "broken-panel")
        assert condition(live, "Stalled")["reason"] == "TokenProblem"
    finally:
        custom.delete_namespaced_custom_object(
            "qsys.dev", "v1alpha1", gitops.ns, "accesspolicies", "broken-panel"
        )


def test_simulator_down_is_degraded_with_the_condition_message_and_recovers(
    gitops: GitOps,
) -> None:
    apps = client.AppsV1Api(gitops.cluster.api)
    apps.patch_namespaced_deployment_scale("core-sim", gitops.ns, {"spec": {"replicas": 0}})
    try:

        def degraded_as_condition() -> str | None:
            health = gitops.core_health()
            if health.get("status") != "Degraded":
                return None
            cond = condition(get(gitops.cluster, gitops.ns, "QSysCore", CORE), "CoreConnected")
            expected = f"{cond.get('reason')}: {cond.get('message')}"
            return str(health.get("message")) if health.get("message") == expected else None

        message = gitops.wait("the QSysCore Degraded in Argo CD", degraded_as_condition, 180)
        print(f"Degraded: {message}")
        assert gitops.argo.app("av-hall")["status"]["health"]["status"] == "Degraded"
    finally:
        apps.patch_namespaced_deployment_scale("core-sim", gitops.ns, {"spec": {"replicas": 1}})
    gitops.wait(
        "the QSysCore Healthy again",
        lambda: gitops.core_health().get("status") == "Healthy" or None,
        timeout=180,
    )


def test_a_rollout_is_progressing_then_healthy(gitops: GitOps) -> None:
    """A commit that changes the gateway's pod template: Argo CD shows the QSysCore
    Progressing (Reconciling=True) and then Healthy; kstatus InProgress, then Current."""
    gitops.repos.commit(site_files(ROLLED), "hall: roll the gateway out")
    gitops.argo.refresh("av-hall")
    health: list[str] = []
    kstatus: list[str] = []

    def done() -> bool | None:
        h = gitops.core_health().get("status", "")
        k = gitops.kstatus("QSysCore", CORE)["status"]
        for seen, value in ((health, h), (kstatus, k)):
            if not seen or seen[-1] != value:
                seen.append(value)
        app = gitops.argo.app("av-hall")
        rolled = "Progressing" in health and "InProgress" in kstatus
        return (rolled and h == "Healthy" and k == "Current" and synced_healthy(app)) or None

    gitops.wait("the rollout seen and finished", done, timeout=240)
    print(f"QSysCore health in Argo CD: {health}; kstatus: {kstatus}")
    assert health.index("Progressing") < len(health) - 1
    assert kstatus.index("InProgress") < len(kstatus) - 1


def test_a_denied_sync_shows_the_api_servers_cel_message(gitops: GitOps) -> None:
    bad = site_core(
        podAnnotations=ROLLOUT,
        autoscaling={**AUTOSCALING, "minReplicas": 3, "maxReplicas": 2},
    )
    gitops.repos.commit(site_files(bad), "hall: an autoscaling range the CRD refuses")
    gitops.argo.refresh("av-hall")

    def refused() -> str | None:
        state = (gitops.argo.app("av-hall").get("status") or {}).get("operationState") or {}
        text = json.dumps(state)
        # Failed, or Running between retries (the failure in its message).
        return text if state.get("phase") != "Succeeded" and CEL_MESSAGE in text else None

    gitops.wait("the sync refused with the CEL message", refused, timeout=120)
    # The live object is untouched: the API server refused it.
    live = get(gitops.cluster, gitops.ns, "QSysCore", CORE)
    assert live["spec"]["gateway"]["autoscaling"]["minReplicas"] == AUTOSCALING["minReplicas"]
    # Stop the retries of the refused revision (as `argocd app terminate-op`), then fix it.
    gitops.argo.custom().patch_namespaced_custom_object(
        "argoproj.io",
        "v1alpha1",
        "argocd",
        "applications",
        "av-hall",
        {"status": {"operationState": {"phase": "Terminating"}}},
    )
    gitops.repos.commit(site_files(ROLLED), "hall: fix the range")
    gitops.argo.refresh("av-hall")
    gitops.wait("av-hall Synced and Healthy again", ready_probe(gitops.argo, "av-hall"))


def test_prune_and_replace_of_the_policy_keep_the_agents_token(gitops: GitOps) -> None:
    """The AccessPolicy replaced (`Replace=true`), then pruned and committed again: the
    pruned policy's token is refused within the reload time, and the generated token
    stays with the Core and is valid again, so its clients keep it."""
    name = f"{POLICY}-ai-agent-token"
    token = secret_text(gitops.cluster.api, gitops.ns, name, "token")
    assert token
    gateway = f"{CORE}-gateway"

    def answers(*statuses: int) -> Callable[[], bool | None]:
        """Every pod behind the Service answers one of statuses: ten calls in a row."""
        run = [0]

        def probe() -> bool | None:
            ok = host_call(gitops.cluster, gitops.ns, gateway, token, "StatusGet") in statuses
            run[0] = run[0] + 1 if ok else 0
            return run[0] >= STREAK or None

        return probe

    gitops.wait("the agent's token accepted", answers(200), timeout=RELOAD_S)
    files = site_files(ROLLED)
    replaced = yaml.safe_load(files[f"{SITE}/accesspolicy.yaml"])
    replaced["metadata"]["annotations"] = {"argocd.argoproj.io/sync-options": "Replace=true"}
    replaced["spec"]["rateLimit"]["burst"] = 30
    revision = gitops.repos.commit(
        {f"{SITE}/accesspolicy.yaml": yaml.safe_dump(replaced, sort_keys=False)},
        "hall: replace the operators' policy",
    )
    gitops.argo.refresh("av-hall")
    gitops.wait("the replacing sync", synced_at(gitops.argo, revision))
    assert secret_text(gitops.cluster.api, gitops.ns, name, "token") == token
    gitops.wait("the token accepted after Replace", answers(200), timeout=RELOAD_S)

    revision = gitops.repos.commit({f"{SITE}/accesspolicy.yaml": ""}, "hall: drop the policy")
    gitops.argo.refresh("av-hall")
    timeline = PruneTimeline(gitops, name)
    # A gateway pod throttles a source after ten failed authentications a minute (429
    # "Too many failed authentications") but always admits a valid token, and these few
    # calls a second stay far below the policy's rate limit: 429 is a refusal as 401 is.
    refused = answers(401, 429)
    try:
        gitops.wait("the pruning sync", timeline.around(synced_at(gitops.argo, revision)))
        gitops.wait("the token refused without its policy", timeline.around(refused), RELOAD_S)
    finally:
        print(f"prune: {timeline.seen}")

    revision = gitops.repos.commit(files, "hall: the operators' policy again")
    gitops.argo.refresh("av-hall")
    gitops.wait("the restoring sync", synced_at(gitops.argo, revision))
    assert secret_text(gitops.cluster.api, gitops.ns, name, "token") == token
    gitops.wait("the same token accepted again", answers(200), timeout=RELOAD_S)


class PruneTimeline:
    """What the prune changed, as (seconds, what): the policy (there, being deleted, gone),
    its token Secret's owners, and whether the rendered config still names the subject."""

    def __init__(self, gitops: GitOps, token_secret: str) -> None:
        self.gitops = gitops
        self.token_secret = token_secret
        self.started = time.monotonic()
        self.seen: list[tuple[float, str]] = []

    def state(self) -> str:
        api, ns = self.gitops.cluster.api, self.gitops.ns
        try:
            meta = get(self.gitops.cluster, ns, "AccessPolicy", POLICY)["metadata"]
            policy = (
                f"deleting {meta.get('finalizers')}" if meta.get("deletionTimestamp") else "there"
            )
        except client.ApiException as exc:
            policy = "gone" if exc.status == 404 else f"error {exc.status}"
        secret = client.CoreV1Api(api).read_namespaced_secret(self.token_secret, ns)
        owners = [r.kind for r in (secret.metadata and secret.metadata.owner_references) or []]
        config = secret_text(api, ns, f"{CORE}-gateway-config", "gateway.yaml") or ""
        rendered = "rendered" if "name: ai-agent" in config else "not rendered"
        pods = client.CoreV1Api(api).list_namespaced_pod(
            ns, label_selector=f"app.kubernetes.io/instance={CORE}"
        )
        answers = sorted(
            f"{(p.metadata.name or '')[-5:]}:{self.pod_answer(p.status.pod_ip)}"
            for p in pods.items
            if p.metadata and p.status and p.status.pod_ip and not p.metadata.deletion_timestamp
        )
        return f"policy {policy}; token owners {owners}; subject {rendered}; pods {answers}"

    def pod_answer(self, ip: str) -> int:
        """The HTTP status one gateway pod answers the agent's token with."""
        token = secret_text(self.gitops.cluster.api, self.gitops.ns, self.token_secret, "token")
        return rpc_status(ip, token or "", "StatusGet")

    def around(self, probe: Callable[[], T | None]) -> Callable[[], T | None]:
        def observed() -> T | None:
            now = self.state()
            if not self.seen or self.seen[-1][1] != now:
                self.seen.append((round(time.monotonic() - self.started, 1), now))
            return probe()

        return observed


@pytest.mark.local_cluster  # the metrics API: metrics-server, which node.sh runs
def test_no_resource_goes_out_of_sync_while_the_hpa_scales(gitops: GitOps) -> None:
    """DRIFT_WINDOW_S of samples with the gateway HPA active, taken since the first test,
    beside the ones after it (DriftWatch)."""
    watch = gitops.watch_drift()
    started = time.monotonic()
    drift = watch.result()
    print(f"drift watch: samples {watch.samples}, waited {time.monotonic() - started:.0f}s")
    for name in watch.samples:
        status = gitops.argo.app(name).get("status") or {}
        op = status.get("operationState") or {}
        print(
            f"{name}: settled={settled(status)} phase={op.get('phase')} "
            f"applied={(op.get('syncResult') or {}).get('revision')} "
            f"compared={(status.get('sync') or {}).get('revision')} "
            f"finishedAt={op.get('finishedAt')} reconciledAt={status.get('reconciledAt')}"
        )
    assert all(n >= DRIFT_WINDOW_S / 3 for n in watch.samples.values()), watch.samples
    assert drift == []


# It deletes the CRDs: no other file's CRs may be live beside it (tests/conftest.py).
@pytest.mark.node_exclusive
def test_a_cr_committed_with_the_chart_syncs_in_one_pass(gitops: GitOps) -> None:
    """docs/argocd/bundle.yaml: one Application of the chart and the site's git path, on
    a cluster without the CRDs. Its first sync applies the CRDs, the operator and the
    QSysCore in one pass (no retry, no sync wave, no SkipDryRunOnMissingResource), and
    the Application becomes Synced and Healthy."""
    if gitops.drift is not None:
        gitops.drift.stop()
    # The site first: its CRs go while the operator still runs.
    gitops.argo.delete_apps(["av-hall", "qsys-operator"])
    ext = client.ApiextensionsV1Api(gitops.cluster.api)
    # Cascading deletion spares the CRDs (helm.sh/resource-policy: keep) ...
    for crd in CRDS:
        assert ext.read_custom_resource_definition(crd).metadata is not None
    # ... so remove them, as on a cluster that never had the chart.
    for crd in CRDS:
        ext.delete_custom_resource_definition(crd)
    for crd in CRDS:
        wait_gone(f"CRD {crd}", functools.partial(ext.read_custom_resource_definition, crd))
    started = time.monotonic()
    applied_at = datetime.now(UTC).replace(microsecond=0)
    bundle = yaml.safe_load(BUNDLE.read_text("utf-8"))
    gitops.argo.apply(localized(bundle, gitops.ns, gitops.repos, gitops.chart))

    def first_sync_done() -> dict[str, Any] | None:
        state = (gitops.argo.app("av-hall-bundle").get("status") or {}).get("operationState")
        return state if (state or {}).get("phase") in ("Succeeded", "Failed", "Error") else None

    state = gitops.wait("the bundle's first sync", first_sync_done)
    results = {
        (r.get("kind"), r.get("name")): r for r in state.get("syncResult", {}).get("resources", [])
    }
    print(f"bundle: first sync {state['phase']} after {time.monotonic() - started:.1f}s")
    assert state["phase"] == "Succeeded", state.get("message")
    assert not state.get("retryCount"), f"retried {state.get('retryCount')} time(s)"
    # Argo CD may start a second automated sync the moment the first ends (the app still
    # compares OutOfSync while the new CRDs settle); its operationState then replaces the
    # first one's and lists only what it applied. So every result shown must be Synced,
    # and the objects themselves show they were created by this Application's first
    # successful sync: after the bundle was applied, before its first history entry.
    expected = [("CustomResourceDefinition", crd) for crd in CRDS]
    expected += [("QSysCore", CORE), ("AccessPolicy", POLICY)]
    for key in expected:
        if key in results:
            assert results[key]["status"] == "Synced", results[key]
    first = (gitops.argo.app("av-hall-bundle")["status"].get("history") or [{}])[0]
    assert first.get("id") == 0, first
    deployed = datetime.fromisoformat(first["deployedAt"].replace("Z", "+00:00"))
    created = {
        crd: must(must(ext.read_custom_resource_definition(crd).metadata).creation_timestamp)
        for crd in CRDS
    }
    for kind, name in (("QSysCore", CORE), ("AccessPolicy", POLICY)):
        stamp = get(gitops.cluster, gitops.ns, kind, name)["metadata"]["creationTimestamp"]
        created[name] = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert all(applied_at <= when <= deployed for when in created.values()), (
        applied_at,
        created,
        deployed,
    )
    # docs/gitops.md "CRD health on the first install".
    gitops.argo.refresh("av-hall-bundle", "normal")
    gitops.wait("av-hall-bundle Synced and Healthy", ready_probe(gitops.argo, "av-hall-bundle"))
    print(f"bundle: created -> Synced and Healthy: {time.monotonic() - started:.1f}s")
    history = gitops.argo.app("av-hall-bundle")["status"].get("history") or []
    print(f"bundle: {len(history)} sync(s) in the history")
