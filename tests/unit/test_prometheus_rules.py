"""The chart's PrometheusRule under the real (pinned) promtool: the rendered groups
pass `promtool check rules`, and `promtool test rules` fires each alert on failing
series and none on healthy ones (tests/fixtures/prometheus/alerts-test.yaml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import REPO, by_kind, manifests, render, run, tool

pytestmark = pytest.mark.tools("helm", "promtool")

FIXTURE = REPO / "tests" / "fixtures" / "prometheus" / "alerts-test.yaml"
ALERTS = {
    "QSysGatewayCoreUnreachable",
    "QSysGatewayHighErrorRatio",
    "QSysGatewayRateLimitStorm",
    "QSysGatewayAuthFailureBurst",
    "QSysOperatorReconcileFailures",
    "QSysGatewayHighLatency",
    "QSysGatewayReplicasUnavailable",
    "QSysGatewayCircuitOpen",
    "QSysGatewayConfigReloadRefused",
    "QSysGatewayRateLimitStorageDown",
}


def _groups() -> list[dict[str, Any]]:
    (rule,) = by_kind(manifests(render(monitoring=True)), "PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def _write_rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": _groups()}, sort_keys=False), "utf-8")
    return path


def test_rendered_rules_pass_promtool_check(tmp_path: Path) -> None:
    rules = _write_rules(tmp_path)
    out = run([tool("promtool", "promtool"), "check", "rules", "--lint-fatal", rules])
    assert f"SUCCESS: {len(ALERTS)} rules found" in out, out


def test_every_alert_has_runbook_severity_and_a_fixture_test() -> None:
    alerts = {r["alert"]: r for g in _groups() for r in g["rules"]}
    assert set(alerts) == ALERTS
    fixture = yaml.safe_load(FIXTURE.read_text("utf-8"))
    tested = {
        (t["alertname"], bool(t["exp_alerts"]))
        for case in fixture["tests"]
        for t in case["alert_rule_test"]
    }
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["runbook_url"].endswith("#" + name.lower())
        assert (name, True) in tested, f"no test fires {name}"
        assert (name, False) in tested, f"no test keeps {name} silent"
    runbooks = (REPO / "docs" / "operations.md").read_text("utf-8").lower()
    for name in ALERTS:
        assert f"### {name.lower()}" in runbooks, f"docs/operations.md has no runbook for {name}"


def test_alerts_fire_and_stay_silent_under_promtool_test(tmp_path: Path) -> None:
    _write_rules(tmp_path)
    shutil.copy(FIXTURE, tmp_path / "alerts-test.yaml")
    out = run(
        [tool("promtool", "promtool"), "test", "rules", tmp_path / "alerts-test.yaml"],
        cwd=tmp_path,
    )
    assert "SUCCESS" in out, out


def test_promtool_test_catches_a_broken_expectation(tmp_path: Path) -> None:
    """The harness can fail: a wrong expected label makes promtool exit non-zero."""
    _write_rules(tmp_path)
    broken = FIXTURE.read_text("utf-8").replace("service: hall-gateway}", "service: other}", 1)
    (tmp_path / "alerts-test.yaml").write_text(broken, "utf-8")
    result = subprocess.run(
        [str(tool("promtool", "promtool")), "test", "rules", "alerts-test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "QSysGatewayCoreUnreachable" in result.stdout + result.stderr
