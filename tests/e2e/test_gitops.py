"""GitOps for real: the pinned Argo CD (application controller and repo server, on the host
with redis, all on loopback) installs the chart from a loopback Helm repository and syncs
a QSysCore and an AccessPolicy from a git repository served on loopback, with the health
checks of docs/argocd loaded through argocd-cm exactly as docs/gitops.md shows them. The
gateway pods run on the real node. The Applications are docs/argocd/applications.yaml.

Besides Argo CD's judgement, the pinned kstatus tool (sigs.k8s.io/cli-utils, the library
behind Flux's health checks and `kubectl wait`'s conventions) judges the live objects.

The tests share one installation and run in file order: later ones change it.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import yaml
from gitops_support import ArgoCD, Repos, argocd, kubectl, served_repos
from kubernetes import client
from node_support import (
    CHART,
    example,
    host_call,
    images,
    real_namespace,
    simulated_core,
    start_simulator,
)
from operator_support import condition, get

from qsys_testkit.checkout import REPO, pinned_tool, run_checked
from qsys_testkit.cluster import Cluster
from qsys_testkit.kube import secret_text

pytestmark = [
    pytest.mark.e2e,
    # The first test includes the module fixture: the chart and the site synced by Argo CD.
    pytest.mark.timeout(900),
    pytest.mark.usefixtures("real_node"),
    pytest.mark.tools("argocd", "kstatus", "helm", "kube"),
]

T = TypeVar("T")
APPLICATIONS = REPO / "docs" / "argocd" / "applications.yaml"
GITOPS_DOC = REPO / "docs" / "gitops.md"
CORE = "hall"
POLICY = "hall-operators"
SITE = "sites/hall"
SYNC_TIMEOUT_S = 300
# docs/gitops.md: a full comparison every 10 s (--app-resync) for 60 s is six of them,
# besides the one every change of a live object triggers; more would not add coverage.
DRIFT_WINDOW_S = 60
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


def applications(ns: str, repos: Repos) -> list[dict[str, Any]]:
    """docs/argocd/applications.yaml with this environment's URLs, namespace and images."""
    project, operator, site = yaml.safe_load_all(APPLICATIONS.read_text("utf-8"))
    project["spec"]["sourceRepos"] = [repos.chart_url, repos.git_url]
    project["spec"]["destinations"][0]["namespace"] = ns
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
    source = operator["spec"]["source"]
    source["repoURL"] = repos.chart_url
    source["targetRevision"] = repos.chart_version
    source["helm"]["releaseName"] = f"qsys-{ns.rsplit('-', 1)[1]}"
    source["helm"]["valuesObject"]["watchNamespaces"] = [ns]
    source["helm"]["parameters"] = [{"name": k, "value": v} for k, v in params.items()]
    site["spec"]["source"]["repoURL"] = repos.git_url
    for app in (operator, site):
        app["spec"]["destination"]["namespace"] = ns
    return [project, operator, site]


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


@dataclass
class GitOps:
    cluster: Cluster
    ns: str
    argo: ArgoCD
    repos: Repos

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float = SYNC_TIMEOUT_S) -> T:
        """wait_for, failing with the Applications' status and the Argo CD logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = probe()
            if got is not None:
                return got
            time.sleep(0.5)
        apps = {n: self.argo.app(n).get("status") for n in ("qsys-operator", "av-hall")}
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
            served_repos(work / "repos", CHART) as repos,
            argocd(cluster, work / "argocd", argocd_cm_from_doc()) as argo,
        ):
            repos.commit(site_files(site_core()), "hall: the Core and its operators")
            for body in applications(ns, repos):
                argo.apply(body)
            try:
                yield GitOps(cluster, ns, argo, repos)
            finally:
                # The site first: its CRs go while the operator still runs.
                argo.delete_apps(["av-hall", "qsys-operator"])
                # Cascading deletion spares the CRDs (helm.sh/resource-policy: keep).
                ext = client.ApiextensionsV1Api(cluster.api)
                for crd in ("qsyscores.qsys.dev", "accesspolicies.qsys.dev"):
                    assert ext.read_custom_resource_definition(crd).metadata is not None


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


def test_no_resource_goes_out_of_sync_while_the_hpa_scales(gitops: GitOps) -> None:
    autoscaling = client.AutoscalingV2Api(gitops.cluster.api)

    def hpa_active() -> bool | None:
        items = autoscaling.list_namespaced_horizontal_pod_autoscaler(gitops.ns).items
        conds = [c for h in items for c in (h.status and h.status.conditions) or []]
        return any(c.type == "ScalingActive" and c.status == "True" for c in conds) or None

    gitops.wait("the gateway HPA ScalingActive", hpa_active, timeout=180)
    drift: list[str] = []
    deadline = time.monotonic() + DRIFT_WINDOW_S
    while time.monotonic() < deadline:
        for name in ("qsys-operator", "av-hall"):
            status = gitops.argo.app(name).get("status") or {}
            if (status.get("sync") or {}).get("status") != "Synced":
                drift.append(f"{name}: {status.get('sync')}")
            drift += [
                f"{name}: {r.get('kind')}/{r.get('name')} {r.get('status')}"
                for r in status.get("resources") or []
                if r.get("status") != "Synced"
            ]
        time.sleep(1)
    assert drift == []


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

    def answers(status: int) -> Callable[[], bool | None]:
        """Every pod behind the Service answers status: ten calls in a row."""
        run = [0]

        def probe() -> bool | None:
            ok = host_call(gitops.cluster, gitops.ns, gateway, token, "StatusGet") == status
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
    refused = answers(401)
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
        return f"policy {policy}; token owners {owners}; subject {rendered}"

    def around(self, probe: Callable[[], T | None]) -> Callable[[], T | None]:
        def observed() -> T | None:
            now = self.state()
            if not self.seen or self.seen[-1][1] != now:
                self.seen.append((round(time.monotonic() - self.started, 1), now))
            return probe()

        return observed
