"""The Prometheus Operator for real, on the real node: the chart installed with monitoring
on (its ServiceMonitor for the operator, its PrometheusRule) and a QSysCore with 2 gateway
replicas whose ServiceMonitor the qsys-operator renders; the pinned prometheus-operator
(on the host, with the admin kubeconfig's credentials) turns a Prometheus object in the
`monitoring` namespace into a StatefulSet whose pod runs on the real node from images
packed of the pinned binaries (hack/cluster/node.sh: prometheus and the operator's
prometheus-config-reloader). The test asks that Prometheus, through its pod IP, what it
scraped and which alerts fire.

Everything runs twice (module-scoped profiles): as this lab runs Prometheus (namespace
`monitoring`, selecting every ServiceMonitor and rule), and as kube-prometheus-stack does
(its own namespace, not named `monitoring`; ServiceMonitors and PrometheusRules selected
by `release: <its release>` only), with the chart's monitoring.labels and
monitoring.scrapers set as docs/install.md says.

The tests share one installation per profile (module scope) and run in file order: the
last one stops the Core.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client, utils
from kubernetes.client.exceptions import ApiException
from node_support import (
    apply_example_policy,
    images,
    is_ready,
    node_images,
    operator_release,
    real_namespace,
    real_node_names,
    run_pod,
    simulated_core,
    start_simulator,
    wait_pods_ready,
)
from operator_support import create, wait_condition
from prometheus_support import MONITORING, po_crds_installed, prometheus_operator

from qsys_testkit import wait_accepted
from qsys_testkit.cluster import Cluster, LocalCluster, must, wait_for
from qsys_testkit.monitoring import alert_names, chart_prometheus_rule, prometheus_api, used_metrics

# Prometheus images node.sh packs and imports into the real node: local cluster only.
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.local_cluster,
    pytest.mark.node_lane("b"),
    pytest.mark.usefixtures("real_node"),
    pytest.mark.tools("helm", "prometheus", "prometheus-operator"),
]

# The images hack/cluster/node.sh packs and imports (binary-alone, from hack/tools).
PROMETHEUS_IMAGE = "qsys.local/prometheus:v3.13.5"
CONFIG_RELOADER_IMAGE = "qsys.local/prometheus-config-reloader:v0.85.0"
CORE = "auditorium"
GATEWAY = f"{CORE}-gateway"
GATEWAY_SELECTOR = f"app.kubernetes.io/instance={CORE},app.kubernetes.io/name=qsys-gateway"
OPERATOR_SELECTOR = "app.kubernetes.io/name=qsys-operator"
PANEL_TOKEN = secrets.token_hex(32)
TIMEOUT_S = 180
GAIN = {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain"}]}
# Short enough for a test: scrapes every 2 s, rules every 1 s, the Core alert after 5 s.
CHART_VALUES = [
    "serviceMonitor.enabled=true",
    "serviceMonitor.interval=2s",
    "prometheusRule.enabled=true",
    "prometheusRule.coreUnreachableFor=5s",
]


@dataclass(frozen=True)
class Profile:
    """How Prometheus is run and selects, and the chart values that go with it."""

    name: str
    namespace: str
    prometheus: str
    """Name of the Prometheus object."""
    chart_values: tuple[str, ...]
    selector: dict[str, Any]
    """serviceMonitorSelector and ruleSelector."""
    scraper_labels: dict[str, str]
    """Labels a pod needs, besides its namespace, to reach the gateways' metrics port."""


LAB = Profile("lab", "monitoring", "k8s", (), {}, {})
KPS_RELEASE = "kps"
KUBE_PROMETHEUS_STACK = Profile(
    "kube-prometheus-stack",
    "observability",
    # As kube-prometheus-stack names it: <release>-kube-prometheus-stack-prometheus.
    f"{KPS_RELEASE}-kube-prometheus-stack-prometheus",
    (
        f"monitoring.labels.release={KPS_RELEASE}",
        "monitoring.scrapers.namespaceSelector.matchLabels"
        ".kubernetes\\.io/metadata\\.name=observability",
        "monitoring.scrapers.podSelector.matchLabels.app\\.kubernetes\\.io/name=prometheus",
    ),
    # Its defaults (serviceMonitorSelectorNilUsesHelmValues, ruleSelectorNilUsesHelmValues).
    {"matchLabels": {"release": KPS_RELEASE}},
    {"app.kubernetes.io/name": "prometheus"},
)


@dataclass
class Monitored:
    profile: Profile
    cluster: Cluster
    ns: str
    release: str
    prometheus: str
    """Base URL of the Prometheus pod (its pod IP), from the host."""
    prometheus_ip: str
    log_dir: Path

    def api(self, path: str, **params: str) -> Any:
        return prometheus_api(self.prometheus, path, **params)

    def series(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=promql)["result"]
        return result

    def pods(self, selector: str) -> list[client.V1Pod]:
        pods = client.CoreV1Api(self.cluster.api).list_namespaced_pod(
            self.ns, label_selector=selector
        )
        return [p for p in pods.items if is_ready(p)]


def _prometheus_rbac(cluster: Cluster, namespace: str) -> None:
    """What the Prometheus pod's service discovery reads (as in kube-prometheus)."""
    name = "qsys-e2e-prometheus"
    for body in (
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "prometheus", "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["services", "endpoints", "pods"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": namespace}],
        },
    ):
        utils.create_from_dict(cluster.api, body)  # type: ignore[no-untyped-call]


def _delete_prometheus_rbac(cluster: Cluster) -> None:
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    for call in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
        try:
            call("qsys-e2e-prometheus")
        except ApiException as exc:
            if exc.status != 404:
                raise


def prometheus_object(profile: Profile) -> dict[str, Any]:
    return {
        "apiVersion": f"{MONITORING}/v1",
        "kind": "Prometheus",
        "metadata": {"name": profile.prometheus, "namespace": profile.namespace},
        "spec": {
            "image": PROMETHEUS_IMAGE,
            "version": "v3.13.5",
            "imagePullPolicy": "Never",
            "replicas": 1,
            "serviceAccountName": "prometheus",
            "serviceMonitorSelector": profile.selector,
            "serviceMonitorNamespaceSelector": {},
            "ruleSelector": profile.selector,
            "ruleNamespaceSelector": {},
            "scrapeInterval": "2s",
            "evaluationInterval": "1s",
            "serviceDiscoveryRole": "EndpointSlice",
            "resources": {"requests": {"cpu": "50m", "memory": "200Mi"}},
        },
    }


def prometheus_selector(profile: Profile) -> str:
    return f"app.kubernetes.io/name=prometheus,prometheus={profile.prometheus}"


@pytest.fixture(scope="module", params=[LAB, KUBE_PROMETHEUS_STACK], ids=lambda p: p.name)
def monitored(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Monitored]:
    profile: Profile = request.param
    log_dir = tmp_path_factory.mktemp(f"prometheus-real-node-{profile.name}")
    missing = {PROMETHEUS_IMAGE, CONFIG_RELOADER_IMAGE} - node_images(cluster)
    if missing and cluster.local:
        # Under `make test` the node may have started before these tool groups were built.
        LocalCluster().import_images()
        missing -= node_images(cluster)
    if missing:
        pytest.fail(
            f"the real node lacks {sorted(missing)}: hack/cluster/node.sh imports them when "
            "the prometheus and prometheus-operator tool groups are built (`make cluster-tools`,"
            " then restart the cluster)",
            pytrace=False,
        )
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(real_namespace(cluster))
        stack.enter_context(po_crds_installed(cluster))
        stack.enter_context(real_namespace(cluster, profile.namespace))
        stack.callback(_delete_prometheus_rbac, cluster)
        _prometheus_rbac(cluster, profile.namespace)
        values = [*CHART_VALUES, *profile.chart_values]
        release = stack.enter_context(operator_release(cluster, ns, values))
        reloader = f"--prometheus-config-reloader={CONFIG_RELOADER_IMAGE}"
        watched = [profile.namespace, ns]
        stack.enter_context(prometheus_operator(cluster, watched, log_dir, reloader))
        start_simulator(cluster, ns)
        qsyscore = simulated_core(CORE)
        qsyscore["spec"]["monitoring"] = {"serviceMonitor": {"enabled": True, "interval": "2s"}}
        create(cluster, ns, qsyscore)
        apply_example_policy(cluster, ns, PANEL_TOKEN)
        wait_pods_ready(cluster, ns, GATEWAY_SELECTOR, 2, timeout=TIMEOUT_S)
        wait_condition(cluster, ns, "QSysCore", CORE, "CoreConnected", "True", timeout=TIMEOUT_S)
        client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
            MONITORING, "v1", profile.namespace, "prometheuses", prometheus_object(profile)
        )
        started = time.monotonic()
        selector = prometheus_selector(profile)
        (pod,) = wait_pods_ready(cluster, profile.namespace, selector, 1, timeout=TIMEOUT_S)
        print(f"Prometheus object -> Ready pod on the node: {time.monotonic() - started:.1f}s")
        ip = must(must(pod.status).pod_ip)
        yield Monitored(profile, cluster, ns, release, f"http://{ip}:9090", ip, log_dir)


def test_prometheus_runs_as_the_operator_built_pod_on_the_real_node(monitored: Monitored) -> None:
    core = client.CoreV1Api(monitored.cluster.api)
    profile = monitored.profile
    (pod,) = core.list_namespaced_pod(
        profile.namespace, label_selector=prometheus_selector(profile)
    ).items
    spec = must(pod.spec)
    assert spec.node_name in real_node_names(monitored.cluster)
    containers = {c.name: c.image for c in spec.containers}
    assert containers == {"prometheus": PROMETHEUS_IMAGE, "config-reloader": CONFIG_RELOADER_IMAGE}
    assert must(pod.status).pod_ip == monitored.prometheus_ip
    if profile is KUBE_PROMETHEUS_STACK:
        # Nothing here depends on a namespace named `monitoring`.
        with pytest.raises(ApiException) as missing:
            core.read_namespace("monitoring")
        assert missing.value.status == 404
        # The ServiceMonitors (the chart's and the operator's) and the PrometheusRule carry
        # the label kube-prometheus-stack selects on.
        custom = client.CustomObjectsApi(monitored.cluster.api)
        for plural in ("servicemonitors", "prometheusrules"):
            found = cast(
                dict[str, Any],
                custom.list_namespaced_custom_object(MONITORING, "v1", monitored.ns, plural),
            )
            labels = [o["metadata"]["labels"] for o in found["items"]]
            assert labels, plural
            assert all(lb.get("release") == KPS_RELEASE for lb in labels), (plural, labels)
    assert monitored.prometheus_ip.startswith("198.18.")
    # The config Prometheus runs is the one the Prometheus Operator generated.
    config = monitored.api("status/config")["yaml"]
    for job in (
        f"serviceMonitor/{monitored.ns}/{GATEWAY}/0",
        f"serviceMonitor/{monitored.ns}/{monitored.release}-qsys-operator/0",
    ):
        assert f"job_name: {job}" in config, config[:3000]
    # The chart's PrometheusRule reached the pod (rule-file ConfigMap, config reloader):
    # every alert is loaded and evaluated.
    alerts = alert_names(chart_prometheus_rule())

    def evaluated() -> set[str] | None:
        groups = monitored.api("rules", type="alert")["groups"]
        ok = {r["name"] for g in groups for r in g["rules"] if r.get("health") == "ok"}
        return ok if ok >= alerts else None

    assert len(alerts) >= 10
    assert wait_for("every chart alert evaluated", evaluated, 60) == alerts


def test_every_gateway_pod_and_the_operator_are_up(monitored: Monitored) -> None:
    gateways = {must(p.metadata).name for p in monitored.pods(GATEWAY_SELECTOR)}
    (operator,) = {must(p.metadata).name for p in monitored.pods(OPERATOR_SELECTOR)}
    assert len(gateways) == 2

    def up(service: str) -> dict[str, str] | None:
        found = monitored.series(f'up{{namespace="{monitored.ns}", service="{service}"}}')
        values = {s["metric"]["pod"]: s["value"][1] for s in found}
        return values if values and set(values.values()) == {"1"} else None

    assert wait_for("gateway targets up", lambda: up(GATEWAY), 120) == dict.fromkeys(gateways, "1")
    op_service = f"{monitored.release}-qsys-operator-metrics"
    assert wait_for("operator target up", lambda: up(op_service), 120) == {operator: "1"}
    targets = monitored.api("targets", state="active")["activeTargets"]
    pools = {t["scrapePool"] for t in targets if t["health"] == "up"}
    assert f"serviceMonitor/{monitored.ns}/{GATEWAY}/0" in pools, pools
    # Scraped at pod addresses (EndpointSlices), the gateways' metrics port.
    urls = [t["scrapeUrl"] for t in targets if t["labels"].get("service") == GATEWAY]
    assert len(urls) == 2, urls
    assert all(u.startswith("http://198.18.") for u in urls), urls
    assert all(u.endswith(":9090/metrics") for u in urls), urls


def test_metrics_of_alerts_and_dashboards_exist_in_what_was_scraped(monitored: Monitored) -> None:
    used = used_metrics()
    assert any(n.startswith("qsys_gateway_") for n in used), used
    assert any(n.startswith("qsys_operator_") for n in used), used
    core = client.CoreV1Api(monitored.cluster.api)
    svc = core.read_namespaced_service(GATEWAY, monitored.ns)
    ip = must(must(svc.spec).cluster_ip)
    # The pods may have started before the policy was rendered (AccessPolicy Ready).
    wait_accepted(f"http://{ip}:8080", PANEL_TOKEN)
    # Calls through the Service from the host (the test_real_gateway path): the request
    # counters and latency histograms get their first samples.
    for method, params in (("StatusGet", {}), ("Component.Get", GAIN)):
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        req = urllib.request.Request(
            f"http://{ip}:8080/v1/rpc",
            data=body.encode(),
            headers={"Authorization": f"Bearer {PANEL_TOKEN}", "Content-Type": "application/json"},
        )
        for _ in range(4):  # both pods, most likely
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200
    deadline = time.monotonic() + 60
    while (left := used - set(monitored.api("label/__name__/values"))) and (
        time.monotonic() < deadline
    ):
        time.sleep(1)
    assert not left, f"never scraped: {sorted(left)}"
    # Scraped from the gateway and the operator targets, not from anything else.
    jobs = {
        s["metric"]["job"]
        for s in monitored.series('count by (job) ({__name__=~"qsys_gateway_.+|qsys_operator_.+"})')
    }
    assert jobs == {GATEWAY, f"{monitored.release}-qsys-operator-metrics"}, jobs


def test_gateway_metrics_port_admits_the_scrapers_only(monitored: Monitored) -> None:
    (pod, *_) = monitored.pods(GATEWAY_SELECTOR)
    gateway_ip = must(must(pod.status).pod_ip)

    def script(seconds: int) -> str:
        """Exit 0 once the metrics port answers; else, after `seconds` (kube-router programs
        a new pod's rules within seconds), 3 if Prometheus answered (a working network),
        4 if nothing did."""
        return f"""
import sys, time, urllib.request
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except Exception as exc:
        return repr(exc)
deadline = time.monotonic() + {seconds}
while True:
    prometheus = get("{monitored.prometheus}/-/ready")
    metrics = get("http://{gateway_ip}:9090/metrics")
    if metrics == 200 or time.monotonic() > deadline:
        break
    time.sleep(1)
print("prometheus", prometheus, "metrics", metrics)
sys.exit(0 if metrics == 200 else 3 if prometheus == 200 else 4)
"""

    image = images()["gateway"]
    profile = monitored.profile
    # A pod like Prometheus's (its namespace, the scrapers' pod labels): admitted.
    code, log = run_pod(
        monitored.cluster,
        profile.namespace,
        "metrics-as-prometheus",
        image,
        script(45),
        labels=profile.scraper_labels,
    )
    assert code == 0, log
    if profile.scraper_labels:
        # The same namespace without those labels: monitoring.scrapers.podSelector holds.
        code, log = run_pod(
            monitored.cluster, profile.namespace, "metrics-unlabelled", image, script(15)
        )
        assert code == 3, log
    # From any other namespace: the pod has a network (it reaches Prometheus), but the
    # gateway's metrics port stays closed to it.
    with real_namespace(monitored.cluster) as other:
        code, log = run_pod(monitored.cluster, other, "metrics-from-elsewhere", image, script(15))
    assert code == 3, log


def test_core_stopped_fires_core_unreachable_and_it_resolves(monitored: Monitored) -> None:
    selector = (
        f'ALERTS{{alertname="QSysGatewayCoreUnreachable", namespace="{monitored.ns}",'
        f' service="{GATEWAY}"}}'
    )
    assert monitored.series(selector) == []
    apps = client.AppsV1Api(monitored.cluster.api)
    apps.patch_namespaced_deployment_scale("core-sim", monitored.ns, {"spec": {"replicas": 0}})
    stopped = time.monotonic()
    firing = wait_for(
        "QSysGatewayCoreUnreachable firing",
        lambda: (
            [s for s in monitored.series(selector) if s["metric"]["alertstate"] == "firing"] or None
        ),
        120,
    )
    print(f"Core stopped -> alert firing: {time.monotonic() - stopped:.1f}s")
    assert firing[0]["metric"]["severity"] == "critical"
    (alert,) = [
        a
        for a in monitored.api("alerts")["alerts"]
        if a["labels"]["alertname"] == "QSysGatewayCoreUnreachable"
        and a["labels"]["namespace"] == monitored.ns
    ]
    assert alert["state"] == "firing"
    assert alert["annotations"]["runbook_url"].endswith("#qsysgatewaycoreunreachable")
    apps.patch_namespaced_deployment_scale("core-sim", monitored.ns, {"spec": {"replicas": 1}})
    returned = time.monotonic()
    wait_for("the alert resolved", lambda: monitored.series(selector) == [] or None, 180)
    print(f"Core back -> alert resolved: {time.monotonic() - returned:.1f}s")
