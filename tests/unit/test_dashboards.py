"""Dashboards and alert rules: the committed dashboard JSON is what qsys_operator.dashboards builds,
the chart ships it for Grafana's sidecar, and every PromQL expression (dashboard targets,
variable queries, alert rules) parses under the pinned promtool and names only metrics the
gateway and operator registries export (collected at runtime, not from a hand list)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from chart_support import by_kind, manifests, render, run, tool
from prometheus_client import CollectorRegistry

from qsys_gateway.metrics import GatewayMetrics
from qsys_operator.metrics import OperatorMetrics
from qsys_testkit.monitoring import (
    EXTERNAL,
    dashboard_exprs,
    dashboards,
    metric_names,
    resolve,
    rule_exprs,
)

pytestmark = pytest.mark.tools("helm", "promtool")

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


def unknown_metrics(exprs: list[tuple[str, str]], allowed: set[str]) -> list[str]:
    return [
        f"{where}: {name}"
        for where, expr in exprs
        for name in sorted(metric_names(resolve(expr)))
        if name not in allowed
    ]


def test_committed_dashboards_match_the_code() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qsys_operator.dashboards", "--check"],
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
