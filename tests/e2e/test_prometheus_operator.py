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
import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_support import REPO, Cluster, must, tool_dir, wait_for
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_support import (
    core_body,
    create,
    running_operator,
)

from qsys_testkit import free_port
from qsys_testkit.kube import apply_crds

pytestmark = pytest.mark.e2e

PO_TOOLS = REPO / "hack" / "tools" / "prometheus-operator"
MONITORING = "monitoring.coreos.com"


def binary(group: str, name: str) -> Path:
    path = tool_dir(group) / name
    if not path.is_file():
        pytest.fail(f"{name} is not built: run `bash hack/tools/build.sh {group}`", pytrace=False)
    return path


def po_crds() -> list[Path]:
    """The Prometheus Operator's CRDs from its (pinned) module."""
    out = subprocess.run(
        [
            "go",
            "list",
            "-m",
            "-f",
            "{{.Dir}}",
            "github.com/prometheus-operator/prometheus-operator",
        ],
        cwd=PO_TOOLS,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return sorted((Path(out.stdout.strip()) / "example" / "prometheus-operator-crd").glob("*.yaml"))


@contextlib.contextmanager
def process(argv: list[str | Path], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def po_crds_installed(cluster: Cluster) -> Iterator[None]:
    """Applied with kubectl: the CRDs carry YAML 1.1 `=` scalars PyYAML's safe loader refuses."""
    paths = po_crds()
    kubectl = [str(tool_dir("kube") / "kubectl"), f"--kubeconfig={cluster.kubeconfig}"]
    files = [arg for p in paths for arg in ("-f", str(p))]
    try:
        subprocess.run(
            [*kubectl, "apply", "--server-side", *files],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [*kubectl, "wait", "--for=condition=Established", "--timeout=60s", *files],
            check=True,
            capture_output=True,
            timeout=90,
        )
        yield
    finally:  # other tests expect no monitoring CRDs
        subprocess.run(
            [*kubectl, "delete", "--ignore-not-found", "--wait=false", *files],
            check=False,
            capture_output=True,
            timeout=120,
        )


def api_server_flags(kubeconfig: str, directory: Path) -> list[str]:
    """The prometheus-operator has no --kubeconfig: the current context as its TLS flags."""
    cfg = yaml.safe_load(Path(kubeconfig).read_text("utf-8"))
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == cfg["current-context"])
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
    flags = [f"--apiserver={cluster['server']}"]
    for flag, section, key in (
        ("ca-file", cluster, "certificate-authority"),
        ("cert-file", user, "client-certificate"),
        ("key-file", user, "client-key"),
    ):
        if key in section:
            path = Path(section[key])
        else:
            path = directory / f"po-{flag}"
            path.write_bytes(base64.b64decode(section[f"{key}-data"]))
            path.chmod(0o600)
        flags.append(f"--{flag}={path}")
    return flags


def chart_rule(namespace: str) -> dict[str, Any]:
    out = subprocess.run(
        [
            str(tool_dir("helm") / "helm"),
            "template",
            "qsys",
            str(REPO / "charts" / "qsys-operator"),
            "--namespace",
            namespace,
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "prometheusRule.coreUnreachableFor=5s",
            "--show-only",
            "templates/prometheusrule.yaml",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    rule: dict[str, Any] = yaml.safe_load(out.stdout)
    return rule


def api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())["data"]


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


def test_prometheus_operator_renders_gateway_scrape_job_and_chart_rules(
    cluster: Cluster, namespace: str, tmp_path: Path, po_crds_installed: None
) -> None:
    ns = namespace
    apply_crds(cluster.api, REPO / "crds")
    custom = client.CustomObjectsApi(cluster.api)
    v1 = client.CoreV1Api(cluster.api)
    web = free_port()
    with contextlib.ExitStack() as stack:
        stack.enter_context(running_operator(cluster, ns, tmp_path / "operator.log"))
        stack.enter_context(
            process(
                [
                    binary("prometheus-operator", "prometheus-operator"),
                    *api_server_flags(cluster.kubeconfig, tmp_path),
                    f"--namespaces={ns}",
                    f"--web.listen-address=127.0.0.1:{web}",
                ],
                tmp_path / "prometheus-operator.log",
            )
        )
        rule = chart_rule(ns)
        alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
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
        port = free_port()
        stack.enter_context(
            process(
                [
                    binary("prometheus", "prometheus"),
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                tmp_path / "prometheus.log",
            )
        )

        def evaluated() -> set[str] | None:
            try:
                groups = api(port, "rules")["groups"]
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
            lambda: job in api(port, "targets", state="any")["droppedTargetCounts"],
            60,
        )
