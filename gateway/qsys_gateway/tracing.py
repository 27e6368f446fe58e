"""OpenTelemetry tracing, off unless the standard OTEL_* environment switches it on.

On when `OTEL_TRACES_EXPORTER` names `otlp`, or an OTLP endpoint is set
(`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), unless
`OTEL_SDK_DISABLED=true`. The operator sets these from `spec.gateway.tracing`. Everything
else (endpoint, headers, sampler, resource attributes, service name) is the SDK's
own reading of OTEL_*. While off nothing is installed: the request path only tests
`ENABLED`.

Spans: the HTTP server span of the aiohttp instrumentation (it honours a client's W3C
`traceparent`), one `qrc.call` span per call with `qsys.subject`, `rpc.method`,
`qsys.transport`, `qsys.decision`, `qsys.outcome` (never tokens, params or values), and
a child `qrc.upstream` span around the round trip to the Core. QRC has no headers, so
the trace context stops at the gateway.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Iterator, Mapping
from typing import TypeVar

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

T = TypeVar("T")

ENABLED = False
EXCLUDED_URLS = "livez,readyz,healthz,metrics,corez,openapi.json"
_tracer: trace.Tracer = trace.NoOpTracer()
_provider: TracerProvider | None = None


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",")}
    if "none" in exporters:
        return False
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return "otlp" in exporters or bool(endpoint)


def setup(env: Mapping[str, str] = os.environ) -> bool:
    """Install the tracer provider with an OTLP exporter when the environment asks for it."""
    global ENABLED, _tracer, _provider
    if ENABLED or not wanted(env):
        return ENABLED
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol != "http/protobuf":
        logging.getLogger(__name__).warning(
            "OTLP protocol %s is not supported; using http/protobuf", protocol[:32]
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": "qsys-gateway"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    # Probes and scrapes make no traces unless the operator of the gateway says otherwise.
    os.environ.setdefault("OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS", EXCLUDED_URLS)
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

    # Patches aiohttp.web.Application: every application built from now on (the HTTP
    # API) gets the server middleware, which honours a client's W3C traceparent.
    AioHttpServerInstrumentor().instrument(tracer_provider=provider)
    _provider = provider
    _tracer = provider.get_tracer("qsys_gateway")
    ENABLED = True
    return True


def shutdown() -> None:
    """Flush and stop the exporter (gateway shutdown)."""
    if _provider is not None:
        _provider.shutdown()


@contextlib.contextmanager
def call_span(transport: str, request_id: str) -> Iterator[trace.Span]:
    inside_request = trace.get_current_span().get_span_context().is_valid  # HTTP server span
    with _tracer.start_as_current_span(
        "qrc.call",
        kind=trace.SpanKind.INTERNAL if inside_request else trace.SpanKind.SERVER,
        attributes={"qsys.transport": transport, "qsys.request_id": request_id},
    ) as span:
        yield span


def upstream_span(method: str) -> contextlib.AbstractContextManager[object]:
    if not ENABLED:
        return contextlib.nullcontext()
    return _tracer.start_as_current_span(
        "qrc.upstream", kind=trace.SpanKind.CLIENT, attributes={"rpc.method": method}
    )


async def upstream_call(method: str, call: Awaitable[T]) -> T:
    """Await a call to the Core inside its upstream span."""
    with upstream_span(method):
        return await call


def annotate(attributes: Mapping[str, str]) -> None:
    """Attributes on the current span (the call span inside `call_span`); no-op while off."""
    if ENABLED:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(attributes)


def trace_id() -> str | None:
    """Hex trace id of the current span, for the audit line and logs."""
    if not ENABLED:
        return None
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


class TraceLogFilter(logging.Filter):
    """Adds `trace_id` / `span_id` to JSON log lines written inside a span."""

    def filter(self, record: logging.LogRecord) -> bool:
        if ENABLED and not hasattr(record, "trace_id"):
            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                record.trace_id = format(ctx.trace_id, "032x")
                record.span_id = format(ctx.span_id, "016x")
        return True
