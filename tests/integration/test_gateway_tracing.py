"""Tracing against a real OTLP receiver: a minimal OpenTelemetry Collector built from its Go
modules (hack/tools/otelcol, OTLP/HTTP on loopback, debug exporter). The gateway, switched
on by the standard OTEL_* variables, honours a client's W3C traceparent, sends a call span
with subject/method/decision/outcome and a child upstream span, and writes the trace id into
the audit line and the JSON log; no token reaches the collector."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest
from gateway_harness import NORULES_TOKEN, PANEL_TOKEN, base_config, pinned_tool

from qsys_testkit import LOOPBACK, GatewayProcess, ManagedProcess, SimulatorProcess, free_port

pytestmark = pytest.mark.tools("otelcol")

TRACE_A = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_B = "0af7651916cd43dd8448eb211c80319c"
PARENT = "00f067aa0ba902b7"


class Collector(ManagedProcess):
    """A real OpenTelemetry Collector printing the spans it receives (debug exporter)."""

    name = "otelcol"
    stop_timeout = 15.0

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.port = free_port()
        self.out = directory / "otelcol.out"
        self.config = directory / "otelcol.yaml"
        self.config.write_text(
            f"""
receivers:
  otlp:
    protocols:
      http:
        endpoint: {LOOPBACK}:{self.port}
exporters:
  debug:
    verbosity: detailed
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [debug]
""",
            "utf-8",
        )

    def start(self) -> Self:
        argv = [str(pinned_tool("otelcol", "otelcol")), "--config", f"file:{self.config}"]
        self._launch(argv, self.out, self.out)
        self.wait_until("OTLP/HTTP", self._accepts, 30)
        return self

    def _accepts(self) -> bool:
        req = urllib.request.Request(
            f"http://{LOOPBACK}:{self.port}/v1/traces",
            data=b"{}",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def text(self) -> str:
        return self.output()

    def spans(self) -> list[dict[str, Any]]:
        """Spans the debug exporter printed: ids, name, attributes."""
        found = []
        for block in re.split(r"\n.*?Span #\d+\n", self.text())[1:]:
            span: dict[str, Any] = {"attributes": {}}
            for key, field in (("trace", "Trace ID"), ("parent", "Parent ID"), ("id", "ID")):
                m = re.search(rf"^\s*{field}\s*:\s*(\S*)$", block, re.M)
                span[key] = m.group(1) if m else ""
            m = re.search(r"^\s*Name\s*:\s*(\S+)", block, re.M)
            span["name"] = m.group(1) if m else ""
            for k, v in re.findall(r"->\s*([\w.]+):\s*\w+\((.*)\)$", block, re.M):
                span["attributes"][k] = v
            found.append(span)
        return found


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    with Collector(tmp_path) as col:
        yield col


@pytest.fixture
def traced_gateway(
    module_sim: SimulatorProcess, collector: Collector, tmp_path: Path
) -> Iterator[GatewayProcess]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{LOOPBACK}:{collector.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "hall-gateway",
    }
    directory = tmp_path / "gw"
    directory.mkdir()
    with GatewayProcess(base_config(module_sim.port), directory, env=env) as gw:
        yield gw


def post(gw: GatewayProcess, token: str, body: bytes, traceparent: str) -> int:
    req = urllib.request.Request(
        f"{gw.url}/v1/rpc",
        data=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "traceparent": traceparent,
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def wait_spans(col: Collector, trace_id: str, names: set[str]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        spans = [s for s in col.spans() if s["trace"] == trace_id]
        if names <= {s["name"] for s in spans}:
            return spans
        time.sleep(0.2)
    pytest.fail(f"spans {names} of {trace_id} not received: {col.text()[-3000:]}")


def test_call_spans_reach_the_collector_with_the_client_trace(
    traced_gateway: GatewayProcess, collector: Collector
) -> None:
    gw = traced_gateway
    allowed = b'{"jsonrpc":"2.0","id":1,"method":"StatusGet"}'
    assert post(gw, PANEL_TOKEN, allowed, f"00-{TRACE_A}-{PARENT}-01") == 200
    spans = wait_spans(collector, TRACE_A, {"qrc.call", "qrc.upstream"})
    by_name = {s["name"]: s for s in spans}
    call, upstream = by_name["qrc.call"], by_name["qrc.upstream"]
    server = [s for s in spans if s["parent"] == PARENT]
    assert len(server) == 1, spans  # the HTTP server span continues the client's trace
    assert call["parent"] == server[0]["id"]
    assert upstream["parent"] == call["id"]
    assert call["attributes"] == {
        "qsys.transport": "http",
        "qsys.request_id": call["attributes"]["qsys.request_id"],
        "qsys.decision": "allow",
        "rpc.method": "StatusGet",
        "qsys.subject": "panel",
        "qsys.outcome": "ok",
    }

    denied = b'{"jsonrpc":"2.0","id":2,"method":"Snapshot.Save","params":{"Name":"x","Bank":1}}'
    assert post(gw, NORULES_TOKEN, denied, f"00-{TRACE_B}-{PARENT}-01") == 403
    (denial,) = [s for s in wait_spans(collector, TRACE_B, {"qrc.call"}) if s["name"] == "qrc.call"]
    assert denial["attributes"]["qsys.decision"] == "deny"
    assert denial["attributes"]["qsys.outcome"] == "denied"
    assert not [
        s for s in collector.spans() if s["trace"] == TRACE_B and s["name"] == "qrc.upstream"
    ]

    audit = [a for a in gw.audit_lines() if a["method"] == "Snapshot.Save"]
    assert [a["traceId"] for a in audit] == [TRACE_B]
    text = collector.text()
    for token in (PANEL_TOKEN, NORULES_TOKEN):
        assert token not in text


def test_log_lines_carry_the_trace_id(traced_gateway: GatewayProcess, collector: Collector) -> None:
    gw = traced_gateway
    bad = b'{"jsonrpc":"2.0","id":1,"method":"StatusGet"}'
    assert post(gw, "not-a-valid-token-at-all-000000000", bad, f"00-{TRACE_A}-{PARENT}-01") == 401
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        traced = [line for line in gw.log_lines() if line.get("trace_id") == TRACE_A]
        if traced:
            break
        time.sleep(0.1)
    assert traced, gw.stderr()[-2000:]
    assert all(len(line["span_id"]) == 16 for line in traced)


def test_tracing_is_off_without_otel_variables(shared_gateway: GatewayProcess) -> None:
    status = post(
        shared_gateway,
        NORULES_TOKEN,
        b'{"jsonrpc":"2.0","id":2,"method":"Snapshot.Save","params":{"Name":"x","Bank":1}}',
        f"00-{TRACE_B}-{PARENT}-01",
    )
    assert status == 403
    audit = [a for a in shared_gateway.audit_lines() if a["method"] == "Snapshot.Save"]
    assert audit
    assert all("traceId" not in a for a in audit)
