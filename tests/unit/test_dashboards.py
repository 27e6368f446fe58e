"""Dashboards and alert rules: the committed dashboard JSON is what hack/dashboards.py builds,
the chart ships it for Grafana's sidecar, and every PromQL expression (dashboard targets,
variable queries, alert rules) parses under the pinned promtool and names only metrics the
gateway and operator registries export (collected at runtime, not from a hand list)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from chart_support import CHART, REPO, by_kind, manifests, render, run, tool
from prometheus_client import CollectorRegistry

from qsys_gateway.metrics import GatewayMetrics
from qsys_operator.metrics import OperatorMetrics

DASHBOARDS = CHART / "dashboards"
# Metrics an alert may name that the product does not export, with who does.
EXTERNAL = {"kube_deployment_status_replicas_unavailable": "kube-state-metrics"}
# Grafana's template variables, replaced by what they stand for at query time.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*\w+\)$", re.S)
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def exported_metrics() -> set[str]:
    """Every sample name the gateway's and the operator's registries can expose."""
    registries: list[CollectorRegistry] = [GatewayMetrics().registry, OperatorMetrics().registry]
    names: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
            names.update(sample.name for sample in family.samples)
    return names


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text("utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable, Grafana variables resolved."""
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                yield f"{name}: {panel['title']}", target["expr"]
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                match = LABEL_VALUES.match(var["query"])
                assert match, f"{name}: variable {var['name']} is not label_values(...)"
                yield f"{name}: variable {var['name']}", match["selector"]


def resolve(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?[a-z_]+\}?", ".*", expr)


def rule_exprs() -> Iterator[tuple[str, str]]:
    (rule,) = by_kind(manifests(render(monitoring=True)), "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            yield f"alert {r['alert']}", r["expr"]


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


def unknown_metrics(exprs: list[tuple[str, str]], allowed: set[str]) -> list[str]:
    return [
        f"{where}: {name}"
        for where, expr in exprs
        for name in sorted(metric_names(resolve(expr)))
        if name not in allowed
    ]


def test_committed_dashboards_match_the_code() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "dashboards.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert set(dashboards()) == {"qsys-gateway.json", "qsys-operator.json"}


def test_dashboards_cover_the_panels_operators_need() -> None:
    gateway = dashboards()["qsys-gateway.json"]
    exprs = " ".join(t["expr"] for p in gateway["panels"] for t in p.get("targets", []))
    for metric in (
        "qsys_gateway_requests_total",
        "qsys_gateway_request_duration_seconds_bucket",
        "qsys_gateway_upstream_up",
        "qsys_gateway_upstream_reconnects_total",
        "qsys_gateway_circuit_state",
        "qsys_gateway_clients",
        "qsys_gateway_change_groups",
        "qsys_gateway_core_polls_total",
        "qsys_gateway_config_reloads_total",
    ):
        assert metric in exprs, f"no gateway panel shows {metric}"
    for transport_quantile in (
        "histogram_quantile(0.5,",
        "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
    ):
        assert transport_quantile in exprs
    refs = [
        (p["title"], [t["refId"] for t in p.get("targets", [])])
        for b in dashboards().values()
        for p in b["panels"]
    ]
    for title, ids in refs:
        assert len(ids) == len(set(ids)), f"{title}: refIds {ids}"
        assert all(ids), f"{title}: refIds {ids}"


def test_every_expression_parses_under_promtool(tmp_path: Path) -> None:
    """Prometheus's own parser: each expression is a recording rule for `promtool check rules`."""
    exprs = [*dashboard_exprs(), *rule_exprs()]
    rules = [
        {"record": f"qsys:check:{i}", "expr": resolve(expr)} for i, (_, expr) in enumerate(exprs)
    ]
    path = tmp_path / "exprs.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}), "utf-8")
    out = run([tool("promtool", "promtool"), "check", "rules", path])
    assert f"SUCCESS: {len(rules)} rules found" in out, out


def test_promtool_check_rejects_a_broken_expression(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    bad = {"record": "qsys:check:bad", "expr": "sum by (service (rate(qsys_gateway_clients[5m]))"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": [bad]}]}), "utf-8")
    result = subprocess.run(
        [str(tool("promtool", "promtool")), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0


def test_dashboards_name_only_exported_metrics() -> None:
    assert unknown_metrics(list(dashboard_exprs()), exported_metrics()) == []


def test_rules_name_only_exported_or_declared_external_metrics() -> None:
    assert unknown_metrics(list(rule_exprs()), exported_metrics() | set(EXTERNAL)) == []


def test_the_metric_check_catches_a_misspelt_metric() -> None:
    exported = exported_metrics()
    assert "qsys_gateway_requests_total" in exported
    assert "qsys_gateway_core_polls_total" in exported
    assert "qsys_operator_reconcile_duration_seconds_bucket" in exported
    bad = [
        ("panel", 'sum(rate(qsys_gateway_request_total{service=~"$service"}[$__rate_interval]))')
    ]
    assert unknown_metrics(bad, exported) == ["panel: qsys_gateway_request_total"]
    assert metric_names('{__name__="qsys_gateway_clients"} + on() up') == {
        "qsys_gateway_clients",
        "up",
    }


@pytest.mark.parametrize("enabled", [False, True])
def test_chart_ships_dashboards_for_the_grafana_sidecar(enabled: bool) -> None:
    docs = manifests(render(values=[f"grafanaDashboards.enabled={str(enabled).lower()}"]))
    maps = {
        d["metadata"]["name"]: d
        for d in by_kind(docs, "ConfigMap")
        if "dashboard" in d["metadata"]["name"]
    }
    if not enabled:
        assert maps == {}
        return
    assert set(maps) == {
        "qsys-qsys-operator-dashboard-gateway",
        "qsys-qsys-operator-dashboard-operator",
    }
    files = dashboards()
    for cm in maps.values():
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((key, text),) = cm["data"].items()
        assert json.loads(text) == files[key]
