"""The gateway's per-call bookkeeping: request ids, the lock-free metric children, the
audit clock, and how client sockets share the descriptor limit."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from qsys_gateway.audit import _Clock
from qsys_gateway.client_registry import ClientHandle, ClientRegistry
from qsys_gateway.connlimit import HttpConnections
from qsys_gateway.metrics import CallCounter, CallHistogram, GatewayMetrics
from qsys_gateway.transports.common import request_id
from qsys_protocol.config import LimitsConfig

BUCKETS = (0.0005, 0.001, 0.0025, 0.01, 1, 10)


def _samples(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if "_created" not in line)


def test_call_metrics_expose_what_prometheus_client_would() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    c1 = CallCounter("x_calls_total", "Calls", ["method", "outcome"], registry=ours)
    c2 = Counter("x_calls_total", "Calls", ["method", "outcome"], registry=theirs)
    h1 = CallHistogram("x_seconds", "Time", ["method"], registry=ours, buckets=BUCKETS)
    h2 = Histogram("x_seconds", "Time", ["method"], registry=theirs, buckets=BUCKETS)
    for method, outcome, seconds in [
        ("Control.Get", "ok", 0.0004),
        ("Control.Get", "ok", 0.001),  # on a bound: counted in its bucket (le)
        ("Control.Set", "denied", 0.003),
        ("Control.Get", "ok", 42.0),  # beyond the last bound: +Inf only
    ]:
        c1.labels(method, outcome).inc()
        c2.labels(method, outcome).inc()
        h1.labels(method).observe(seconds)
        h2.labels(method).observe(seconds)
    c1.labels("Control.Get", "ok").inc(2)
    c2.labels("Control.Get", "ok").inc(2)
    assert _samples(ours) == _samples(theirs)
    assert ours.get_sample_value("x_seconds_bucket", {"method": "Control.Get", "le": "0.001"}) == 2


def test_call_metrics_refuse_a_wrong_label_set() -> None:
    metrics = GatewayMetrics()
    with pytest.raises(ValueError, match="labels"):
        metrics.requests.labels("Control.Get", "only-two")
    child = metrics.requests.labels("a", "b", "c", "d")
    assert metrics.requests.labels("a", "b", "c", "d") is child


def test_request_ids_are_unique_hex_without_randomness_per_call() -> None:
    ids = [request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert request_id("client-id.1:a") == "client-id.1:a"
    assert request_id("bad id with spaces") != "bad id with spaces"


def test_audit_clock_writes_what_isoformat_would(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    for t in (1_767_225_600.0, 1_767_225_600.9999, 1_767_225_601.042, 1_767_225_661.5):
        monkeypatch.setattr("qsys_gateway.audit.time.time", lambda t=t: t)
        expected = dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")
        assert clock.now() == expected


def _handle(transport: str, n: int) -> ClientHandle:
    async def close() -> None:
        return None

    return ClientHandle(transport, f"10.0.0.{n % 250}", lambda _msg: None, close, subject="s")


def test_client_sockets_share_the_descriptors_once() -> None:
    """A WebSocket client is one HTTP connection and one of `maxClients`: it takes one
    descriptor, not two, so 10,000 of them fit a limit of 20,000; raw QRC sockets open
    leave that many fewer for HTTP."""
    metrics = GatewayMetrics()
    clients = ClientRegistry(metrics)
    limits = LimitsConfig(maxClients=10_000, maxHttpConnections=100_000)
    http = HttpConnections(
        metrics, lambda: limits, fd_budget=20_000 - 64, other_fds=lambda: clients.count("qrc")
    )
    assert http.max_total == 19_936
    qrc = [_handle("qrc", i) for i in range(3_000)]
    for h in qrc:
        clients.add(h)
    clients.add(_handle("ws", 1))
    assert clients.count("qrc") == 3_000
    assert clients.count("ws") == 1
    assert http.max_total == 16_936
    for h in qrc:
        clients.remove(h)
    assert clients.count("qrc") == 0
    assert http.max_total == 19_936
    small = LimitsConfig(maxHttpConnections=4096)
    assert HttpConnections(metrics, lambda: small, fd_budget=19_936).max_total == 4096
