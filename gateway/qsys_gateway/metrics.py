"""Prometheus metrics of the gateway (SPEC section 6), one registry per gateway instance.

Label values are bounded: methods outside the modelled set count as `other`,
subjects come from the config only (unauthenticated calls use `-`).

The per-call series (`requests_total`, the two duration histograms, `audit_events_total`)
are `CallCounter` / `CallHistogram`: children that are plain numbers, looked up in a
dict and bumped without a lock. Every update and every scrape runs on the event loop's
thread, so the lock and label validation of prometheus-client's children would only
cost time on each call; the exposition is the same.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from qsys_protocol.qrc.methods import METHODS

PREFIX = "qsys_gateway"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
EXTRA_METHOD_LABELS = frozenset({"Logon", "batch"})


def method_label(method: str) -> str:
    return method if method in METHODS or method in EXTRA_METHOD_LABELS else "other"


class CountChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class ObserveChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # `le`: a bound is inclusive
        self.sum += value


class _Family(Collector):
    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        registry.register(self)

    def _check(self, values: tuple[str, ...]) -> None:
        if len(values) != len(self.labelnames) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"{self.name} takes the labels {self.labelnames}")

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        raise NotImplementedError


class CallCounter(_Family):
    """A labelled counter; `labels(...)` returns the child (created once per label set)."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self._children: dict[tuple[str, ...], CountChild] = {}
        super().__init__(name.removesuffix("_total"), documentation, labelnames, registry)

    def labels(self, *values: str) -> CountChild:
        child = self._children.get(values)
        if child is None:
            self._check(values)
            child = self._children[values] = CountChild()
        return child

    def _families(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value)
        yield family


class CallHistogram(_Family):
    """A labelled histogram; `labels(...)` returns the child (created once per label set)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        self._bounds = tuple(sorted(float(b) for b in buckets))
        self._le = [repr(b) for b in self._bounds] + ["+Inf"]  # as prometheus-client
        self._children: dict[tuple[str, ...], ObserveChild] = {}
        super().__init__(name, documentation, labelnames, registry)

    def labels(self, *values: str) -> ObserveChild:
        child = self._children.get(values)
        if child is None:
            self._check(values)
            child = self._children[values] = ObserveChild(self._bounds)
        return child

    def _families(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            total = 0
            buckets: list[tuple[str, float]] = []
            for le, count in zip(self._le, child.counts, strict=True):
                total += count
                buckets.append((le, total))
            family.add_metric(list(values), buckets, child.sum)
        yield family


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = CallCounter(
            f"{PREFIX}_requests_total",
            "Calls handled, by outcome (ok, error, denied, unauthenticated, rate_limited, "
            "invalid, unavailable, timeout)",
            ["method", "subject", "transport", "outcome"],
            registry=r,
        )
        self.request_duration = CallHistogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from receiving a call to answering it",
            ["method", "transport"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.upstream_up = Gauge(
            f"{PREFIX}_upstream_up", "1 when a logged-on connection to the Core is open", registry=r
        )
        self.upstream_reconnects = Counter(
            f"{PREFIX}_upstream_reconnects_total", "Reconnects to the Core", registry=r
        )
        self.upstream_duration = CallHistogram(
            f"{PREFIX}_upstream_request_duration_seconds",
            "Round trip of calls forwarded to the Core",
            ["method"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.clients = Gauge(
            f"{PREFIX}_clients", "Connected WebSocket and QRC clients", ["transport"], registry=r
        )
        self.auth_failures = Counter(
            f"{PREFIX}_auth_failures_total", "Failed authentications", ["transport"], registry=r
        )
        self.circuit_state = Gauge(
            f"{PREFIX}_circuit_state",
            "Circuit breaker towards the Core: 0 closed, 1 half-open, 2 open",
            registry=r,
        )
        self.config_reloads = Counter(
            f"{PREFIX}_config_reloads_total", "Config reloads by result", ["result"], registry=r
        )
        self.audit_events = CallCounter(
            f"{PREFIX}_audit_events_total", "Audit lines written", ["decision"], registry=r
        )
        self.change_groups = Gauge(
            f"{PREFIX}_change_groups", "Change groups held on behalf of clients", registry=r
        )
        self.core_change_groups = Gauge(
            f"{PREFIX}_core_change_groups",
            "Change groups the gateway holds on the Core (shared by every client group)",
            registry=r,
        )
        self.core_polls = Counter(
            f"{PREFIX}_core_polls",
            "ChangeGroup.Poll calls the gateway made on the Core (rate() = Core polls per second)",
            registry=r,
        )
        self.ratelimit_storage_up = Gauge(
            f"{PREFIX}_ratelimit_storage_up",
            "1 when the rate-limit storage answers (always 1 for memory storage)",
            registry=r,
        )
        self.ratelimit_storage_up.set(1)
        self.subject_share_full = Counter(
            f"{PREFIX}_subject_share_full",
            "Calls refused after waiting their whole timeout for a slot of their subject's "
            "share of the calls pending on the Core (limits.maxPendingCoreCallsPerSubject)",
            registry=r,
        )
        self.ratelimit_fallback = Counter(
            f"{PREFIX}_ratelimit_fallback",
            "Rate-limit decisions this replica made alone (in memory) because the shared "
            "storage did not answer",
            registry=r,
        )
        self.unauthenticated_clients = Gauge(
            f"{PREFIX}_unauthenticated_clients",
            "WebSocket and QRC connections not logged on yet",
            registry=r,
        )
        self.upstream_sessions = Gauge(
            f"{PREFIX}_upstream_sessions",
            "Client sessions on the shared upstream (one per logged-on connection, one per "
            "subject for HTTP)",
            registry=r,
        )
        self.slow_clients = Counter(
            f"{PREFIX}_slow_clients_closed_total",
            "Clients closed because replies piled up unread (send queue over its bound)",
            ["transport"],
            registry=r,
        )
        self.send_queue_bytes = Gauge(
            f"{PREFIX}_send_queue_bytes", "Bytes queued for clients, all connections", registry=r
        )
        self.http_connections = Gauge(
            f"{PREFIX}_http_connections", "Open connections on the HTTP listener", registry=r
        )
        self.connections_refused = Counter(
            f"{PREFIX}_connections_refused_total",
            "Connections refused or closed by a connection limit or read timeout",
            ["listener", "reason"],
            registry=r,
        )
        self.tokenreview = Counter(
            f"{PREFIX}_tokenreview_total",
            "TokenReview calls to the Kubernetes API server, by result (authenticated, "
            "rejected, error: no answer, the client was refused)",
            ["result"],
            registry=r,
        )
        self.tokenreview_duration = Histogram(
            f"{PREFIX}_tokenreview_duration_seconds",
            "Round trip of TokenReview calls",
            buckets=_BUCKETS,
            registry=r,
        )
        self.tokenreview_cache = Counter(
            f"{PREFIX}_tokenreview_cache_total",
            "ServiceAccount tokens answered without a call of their own (hit: from the "
            "cache; coalesced: by an identical review in flight)",
            ["result"],
            registry=r,
        )
        self.tokenreview_skipped = Counter(
            f"{PREFIX}_tokenreview_skipped_total",
            "Tokens refused without a TokenReview (claims: not a token for this audience "
            "or expired; busy: too many reviews in flight; throttled: failed-logon block)",
            ["reason"],
            registry=r,
        )
        # Bounded label sets start at zero, so every series exists before its first event.
        for transport in ("ws", "qrwc", "qrc"):
            self.slow_clients.labels(transport)
            self.clients.labels(transport)
        for transport in ("http", "ws", "qrwc", "qrc"):
            self.auth_failures.labels(transport)
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        for decision in ("allow", "deny"):
            self.audit_events.labels(decision)
        for result in ("authenticated", "rejected", "error"):
            self.tokenreview.labels(result)
        for result in ("hit", "coalesced"):
            self.tokenreview_cache.labels(result)
        for reason in ("claims", "busy", "throttled"):
            self.tokenreview_skipped.labels(reason)
