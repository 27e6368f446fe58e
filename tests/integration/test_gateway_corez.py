"""`GET /corez` on the metrics listener: the gateway's view of the Core, read by the operator."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from gateway_harness import GatewayFactory

from qsys_testkit import LOOPBACK, SimulatorProcess


def corez(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/corez", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("application/json")
        body: dict[str, Any] = json.loads(r.read())
        return body


def wait_corez(port: int, up: bool, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body = corez(port)
    while body["upstreamUp"] is not up and time.monotonic() < deadline:
        time.sleep(0.1)
        body = corez(port)
    assert body["upstreamUp"] is up, body
    return body


def test_corez_reports_engine_status_then_core_down(make_gateway: GatewayFactory) -> None:
    with SimulatorProcess() as sim:
        gw = make_gateway(sim.port)
        body = wait_corez(gw.metrics_port, up=True)
        engine = body["engineStatus"]
        assert set(engine) == {"State", "DesignName", "Platform"}
        assert engine["State"] == "Active"
        assert engine["DesignName"]
        sim.kill()
        down = wait_corez(gw.metrics_port, up=False)
        assert set(down) == {"upstreamUp", "engineStatus"}
