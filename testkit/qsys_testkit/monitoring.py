"""The chart's alert rules and dashboards as this repository's tests use them, and a client
for Prometheus's HTTP API. Needs a checkout (the chart, the pinned helm) and the `dev`
extras (promql-parser), like `qsys_testkit.checkout`.

    rule = chart_prometheus_rule("prometheusRule.coreUnreachableFor=5s")
    names = used_metrics()            # every metric an alert or a dashboard names
    prometheus_api("http://127.0.0.1:9090", "query", query="up")
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import promql_parser
import yaml

from .checkout import REPO, pinned_tool

CHART = REPO / "charts" / "qsys-operator"
DASHBOARDS = CHART / "dashboards"
# Metrics an alert may name that the product does not export, with who does.
EXTERNAL = {"kube_deployment_status_replicas_unavailable": "kube-state-metrics"}
# Grafana's template variables, replaced by what they stand for at query time.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*\w+\)$", re.S)


def chart_prometheus_rule(*values: str, namespace: str = "qsys-system") -> dict[str, Any]:
    """The chart's PrometheusRule (`helm template`, prometheusRule.enabled=true) with
    `--set` VALUES, e.g. "prometheusRule.coreUnreachableFor=5s"."""
    args = [str(pinned_tool("helm", "helm")), "template", "qsys", str(CHART)]
    args += ["--namespace", namespace, "--show-only", "templates/prometheusrule.yaml"]
    for value in ("prometheusRule.enabled=true", *values):
        args += ["--set", value]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60)  # noqa: S603
    rule: dict[str, Any] = yaml.safe_load(out.stdout)
    return rule


def alert_names(rule: dict[str, Any]) -> set[str]:
    return {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}


def dashboards() -> dict[str, dict[str, Any]]:
    """The committed dashboard JSON files (qsys_operator.dashboards) by file name."""
    return {p.name: json.loads(p.read_text("utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable, Grafana variables as is."""
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                yield f"{name}: {panel['title']}", target["expr"]
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                match = LABEL_VALUES.match(var["query"])
                if not match:
                    raise ValueError(f"{name}: variable {var['name']} is not label_values(...)")
                yield f"{name}: variable {var['name']}", match["selector"]


def rule_exprs(rule: dict[str, Any] | None = None) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every alert of the chart's PrometheusRule (or of `rule`)."""
    for group in (rule or chart_prometheus_rule())["spec"]["groups"]:
        for r in group["rules"]:
            yield f"alert {r['alert']}", r["expr"]


def resolve(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced: valid PromQL."""
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?[a-z_]+\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    """Metric names of every vector selector in `expr` (promql-parser's AST)."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                found.add(node.name)
            found.update(m.value for m in node.matchers.matchers if m.name == "__name__")
            return
        if isinstance(node, promql_parser.MatrixSelector):
            walk(node.vector_selector)
        elif isinstance(node, promql_parser.BinaryExpr):
            walk(node.lhs)
            walk(node.rhs)
        elif isinstance(node, promql_parser.AggregateExpr):
            walk(node.expr)
            if node.param is not None:
                walk(node.param)
        elif isinstance(node, promql_parser.Call):
            for arg in node.args:
                walk(arg)
        elif isinstance(
            node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr
        ):
            walk(node.expr)

    walk(promql_parser.parse(expr))
    return found


def used_metrics(rule: dict[str, Any] | None = None) -> set[str]:
    """Every metric the dashboards and the alerts name, but those of EXTERNAL exporters."""
    exprs = [*dashboard_exprs(), *rule_exprs(rule)]
    return {n for _, e in exprs for n in metric_names(resolve(e))} - set(EXTERNAL)


def prometheus_api(base: str, path: str, **params: str) -> Any:
    """`data` of GET BASE/api/v1/PATH?PARAMS; raises unless Prometheus says success."""
    url = f"{base}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - a test's Prometheus
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus {path}: {body}")
    return body["data"]
