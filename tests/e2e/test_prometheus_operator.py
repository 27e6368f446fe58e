"""The Prometheus Operator for real, on the local control plane: the pinned
prometheus-operator (built from its Go module) turns a Prometheus object, the gateway
ServiceMonitor the qsys-operator renders and the chart's PrometheusRule into a Prometheus
config and rule files, and a pinned Prometheus on the host (kwok runs no real pods) loads
them: the gateway's scrape job discovers through the API server and every chart alert is
evaluated.

Scraping the gateway through that job needs EndpointSlices with the pods' addresses; the
API server refuses loopback addresses there, and kwok's pods live on loopback, so that part
needs the real node (docs/operations.md, "Prometheus Operator")."""

from __future__ import annotations

import base64
import contextlib
import gzip
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_support import (
    core_body,
    create,
    running_operator,
)
from prometheus_support import MONITORING, po_crds_installed, prometheus_operator

from qsys_testkit import free_port, stop_process
from qsys_testkit.checkout import REPO, pinned_tool
from qsys_testkit.cluster import Cluster, must, wait_for
from qsys_testkit.kube import apply_crds
from qsys_testkit.monitoring import alert_names, chart_prometheus_rule, prometheus_api

pytestmark = [pytest.mark.e2e, pytest.mark.tools("helm", "prometheus", "prometheus-operator")]


def local_config(generated: bytes, kubeconfig: str, rules_dir: Path) -> dict[str, Any]:
    """The operator's config for a Prometheus on the host: discovery through the kubeconfig
    instead of the in-cluster service account, rule files from a local directory."""
    # What prometheus-config-reloader does in the pod: $(SHARD) and $(POD_NAME) from its env.
    text = gzip.decompress(generated).decode().replace("$(SHARD)", "0")
    config: dict[str, Any] = yaml.safe_load(text.replace("$(POD_NAME)", "prometheus-k8s-0"))
    for job in config.get("scrape_configs") or []:
        for sd in job.get("kubernetes_sd_configs") or []:
            sd["kubeconfig_file"] = kubeconfig
    config["rule_files"] = [str(rules_dir / "*.yaml")]
    return config


@contextlib.contextmanager
def host_prometheus(config: Path, directory: Path) -> Iterator[str]:
    """The pinned Prometheus on a loopback port: its base URL."""
    port = free_port()
    with (directory / "prometheus.log").open("ab") as out:
        proc = subprocess.Popen(
            [
                str(pinned_tool("prometheus", "prometheus")),
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, 20)


def test_prometheus_operator_renders_gateway_scrape_job_and_chart_rules(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    apply_crds(cluster.api, REPO / "crds")
    custom = client.CustomObjectsApi(cluster.api)
    v1 = client.CoreV1Api(cluster.api)
    with contextlib.ExitStack() as stack:
        stack.enter_context(po_crds_installed(cluster))
        stack.enter_context(running_operator(cluster, ns, tmp_path / "operator.log"))
        stack.enter_context(prometheus_operator(cluster, [ns], tmp_path))
        rule = chart_prometheus_rule("prometheusRule.coreUnreachableFor=5s", namespace=ns)
        alerts = alert_names(rule)
        custom.create_namespaced_custom_object(MONITORING, "v1", ns, "prometheusrules", rule)
        custom.create_namespaced_custom_object(
            MONITORING,
            "v1",
            ns,
            "prometheuses",
            {
                "apiVersion": f"{MONITORING}/v1",
                "kind": "Prometheus",
                "metadata": {"name": "k8s"},
                "spec": {
                    "serviceMonitorSelector": {},
                    "ruleSelector": {},
                    "scrapeInterval": "1s",
                    "evaluationInterval": "1s",
                    "serviceDiscoveryRole": "EndpointSlice",
                },
            },
        )
        create(cluster, ns, core_body("room", free_port()))
        job = f"serviceMonitor/{ns}/room-gateway/0"

        def generated() -> bytes | None:
            try:
                secret = v1.read_namespaced_secret("prometheus-k8s", ns)
            except ApiException:
                return None
            data = (secret.data or {}).get("prometheus.yaml.gz")
            if data is None:
                return None
            raw = base64.b64decode(data)
            return raw if job.encode() in gzip.decompress(raw) else None

        raw = wait_for("Prometheus config with the gateway ServiceMonitor", generated, 90)
        rules_dir = tmp_path / "rules"
        rules_dir.mkdir()

        def rule_files() -> bool:
            maps = v1.list_namespaced_config_map(ns).items
            files = {
                k: v
                for cm in maps
                if must(must(cm.metadata).name).startswith("prometheus-k8s-rulefiles")
                for k, v in (cm.data or {}).items()
            }
            for name, text in files.items():
                (rules_dir / name).write_text(text)
            return bool(files)

        wait_for("rule files", rule_files, 60)
        config = local_config(raw, cluster.kubeconfig, rules_dir)
        (scrape,) = [j for j in config["scrape_configs"] if j["job_name"] == job]
        (sd,) = scrape["kubernetes_sd_configs"]
        assert (sd["role"], sd["namespaces"]["names"]) == ("endpointslice", [ns])
        assert scrape["metrics_path"] == "/metrics"
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        base = stack.enter_context(host_prometheus(config_path, tmp_path))

        def evaluated() -> set[str] | None:
            try:
                groups = prometheus_api(base, "rules")["groups"]
            except OSError:
                return None
            ok = {
                r["name"]
                for g in groups
                for r in g["rules"]
                if r.get("health") == "ok" and r["type"] == "alerting"
            }
            return ok if ok >= alerts else None

        assert len(alerts) >= 10
        assert wait_for("every chart alert evaluated", evaluated, 60) == alerts
        # The job's Kubernetes discovery has synced with the API server.
        wait_for(
            "the gateway job's discovery",
            lambda: job in prometheus_api(base, "targets", state="any")["droppedTargetCounts"],
            60,
        )
