"""Operator metrics (prefix qsys_operator_), on their own registry and HTTP listener."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

KINDS = ("QSysCore", "AccessPolicy")
RESULTS = ("success", "error", "permanent_error")


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconcile_total = Counter(
            "qsys_operator_reconcile_total",
            "Reconciles by kind and result.",
            ["kind", "result"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "qsys_operator_reconcile_duration_seconds",
            "Reconcile duration.",
            ["kind"],
            registry=self.registry,
        )
        self.api_calls = Counter(
            "qsys_operator_api_calls_total",
            "Kubernetes API calls sent, by call (HTTP verb and resource, or client method).",
            ["call"],
            registry=self.registry,
        )
        self.managed_cores = Gauge(
            "qsys_operator_managed_cores",
            "QSysCores this operator manages.",
            registry=self.registry,
        )
        for kind in KINDS:
            self.reconcile_duration.labels(kind)
            for result in RESULTS:
                self.reconcile_total.labels(kind, result)

    def count_api_call(self, call: str) -> None:
        self.api_calls.labels(call).inc()

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
