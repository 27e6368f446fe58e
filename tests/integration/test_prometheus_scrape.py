"""A real Prometheus (built from its Go module, hack/tools/prometheus) scrapes a real gateway
on loopback and evaluates the chart's alert rules: the target is up, every gateway metric the
dashboards and rules name exists in what was scraped, and QSysGatewayCoreUnreachable fires
once the Core is stopped. (The Prometheus Operator itself is not in this test.)"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_harness import PANEL_TOKEN, base_config, pinned_tool

from qsys_testkit import LOOPBACK, GatewayProcess, SimulatorProcess, free_port, stop_process
from qsys_testkit.monitoring import chart_prometheus_rule, prometheus_api, used_metrics

pytestmark = pytest.mark.tools("prometheus", "helm")

LABELS = {"namespace": "av", "service": "hall-gateway", "pod": "hall-gateway-a"}


def chart_rules(path: Path) -> None:
    """The chart's PrometheusRule groups, with a short `for` so the test need not wait 2m."""
    rule = chart_prometheus_rule("prometheusRule.coreUnreachableFor=5s")
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), "utf-8")


def query(port: int, api: str, **params: str) -> Any:
    return prometheus_api(f"http://{LOOPBACK}:{port}", api, **params)


def wait(what: str, probe: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    log = tmp_path / "prometheus.log"
    config.write_text("global: {scrape_interval: 1s}\n", "utf-8")  # the test loads its own
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                str(pinned_tool("prometheus", "prometheus")),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address={LOOPBACK}:{port}",
                "--web.enable-lifecycle",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield port, config
    finally:
        stop_process(proc, 20)


def test_real_prometheus_scrapes_the_gateway_and_fires_core_unreachable(
    prometheus: tuple[int, Path], tmp_path: Path
) -> None:
    port, config_path = prometheus
    rules = tmp_path / "rules.yaml"
    chart_rules(rules)
    with SimulatorProcess() as sim:
        gw_dir = tmp_path / "gw"
        gw_dir.mkdir()
        gw = GatewayProcess(base_config(sim.port), gw_dir).start()
        try:
            config_path.write_text(
                yaml.safe_dump(
                    {
                        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                        "rule_files": [str(rules)],
                        "scrape_configs": [
                            {
                                "job_name": "hall-gateway",
                                "static_configs": [
                                    {
                                        "targets": [f"{LOOPBACK}:{gw.metrics_port}"],
                                        "labels": LABELS,
                                    }
                                ],
                            }
                        ],
                    }
                ),
                "utf-8",
            )
            wait("Prometheus ready", lambda: _ready(port))
            reload = urllib.request.Request(f"http://{LOOPBACK}:{port}/-/reload", method="POST")
            with urllib.request.urlopen(reload, timeout=10) as r:
                assert r.status == 200
            wait(
                "gateway target up",
                lambda: [
                    t
                    for t in query(port, "targets")["activeTargets"]
                    if t["health"] == "up" and t["labels"]["service"] == "hall-gateway"
                ],
            )
            for _ in range(3):
                _call(gw)
            names = set(
                wait(
                    "request histogram scraped",
                    lambda: (
                        (n := query(port, "label/__name__/values"))
                        and "qsys_gateway_request_duration_seconds_bucket" in n
                        and n
                    ),
                )
            )
            used = _gateway_metrics_used()
            assert used, "no gateway metric found in dashboards and rules"
            assert used <= names, sorted(used - names)
            assert (
                query(port, "query", query='up{service="hall-gateway"}')["result"][0]["value"][1]
                == "1"
            )

            sim.kill()
            alert = wait(
                "QSysGatewayCoreUnreachable firing",
                lambda: [
                    a
                    for a in query(port, "alerts")["alerts"]
                    if a["labels"]["alertname"] == "QSysGatewayCoreUnreachable"
                    and a["state"] == "firing"
                ],
                timeout=90,
            )[0]
            assert alert["labels"]["service"] == "hall-gateway"
            assert alert["annotations"]["runbook_url"].endswith("#qsysgatewaycoreunreachable")
        finally:
            gw.stop()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/-/ready", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _call(gw: GatewayProcess) -> None:
    """A call answered locally and one forwarded to the Core (both latency histograms)."""
    for body in (
        b'{"jsonrpc":"2.0","id":1,"method":"StatusGet"}',
        b'{"jsonrpc":"2.0","id":2,"method":"Control.Get","params":["LobbyGain"]}',
    ):
        req = urllib.request.Request(
            f"{gw.url}/v1/rpc",
            data=body,
            headers={"Authorization": f"Bearer {PANEL_TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200


def _gateway_metrics_used() -> set[str]:
    """The qsys_gateway_* names the dashboards and the alerts use (the kit's extractor)."""
    return {name for name in used_metrics() if name.startswith("qsys_gateway_")}
