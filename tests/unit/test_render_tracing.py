"""spec.gateway.tracing: the OTEL_* variables on the gateway container, the NetworkPolicy
egress to the OTLP endpoint, and the gateway's own reading of those variables."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from test_render import by_kind, make_core, render

from qsys_gateway import tracing
from qsys_operator.render import render_core_children
from qsys_operator.settings import OperatorSettings


def env_of(children: dict[str, Any]) -> dict[str, str]:
    (container,) = children["Deployment"]["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container.get("env", [])}


def egress_of(children: dict[str, Any]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = children["NetworkPolicy"]["spec"]["egress"]
    return rules


def test_tracing_env_and_egress_for_a_service_endpoint() -> None:
    core = make_core(
        gateway={
            "tracing": {
                "otlpEndpoint": "http://otel-collector.monitoring:4318/",
                "samplingRatio": 0.25,
            }
        }
    )
    children = by_kind(render(core))
    assert env_of(children) == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.monitoring:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_SERVICE_NAME": "hall-gateway",
        "OTEL_RESOURCE_ATTRIBUTES": "k8s.namespace.name=av,qsys.core=hall",
    }
    assert tracing.wanted(env_of(children))
    # A DNS name: no egress unless the platform allows namespaces, then only those.
    assert all("namespaceSelector" not in p for r in egress_of(children)[2:] for p in r["to"])
    allowed = OperatorSettings(gateway_egress_namespaces=("monitoring",))
    rule = egress_of(by_kind(render_core_children(core, [], allowed)))[-1]
    assert rule == {
        "to": [
            {
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "In",
                            "values": ["monitoring"],
                        }
                    ]
                }
            }
        ],
        "ports": [{"protocol": "TCP", "port": 4318}],
    }


def test_ip_endpoint_gets_an_ip_block_and_https_defaults_to_443() -> None:
    children = by_kind(
        render(make_core(gateway={"tracing": {"otlpEndpoint": "https://192.0.2.7"}}))
    )
    assert egress_of(children)[-1] == {
        "to": [{"ipBlock": {"cidr": "192.0.2.7/32"}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }


def test_no_tracing_no_env_no_egress() -> None:
    children = by_kind(render())
    assert env_of(children) == {}
    assert not tracing.wanted(env_of(children))
    assert all(4318 not in [p["port"] for p in r["ports"]] for r in egress_of(children))


@pytest.mark.parametrize("endpoint", ["otel:4318", "ftp://otel:21", "http://a b:1", ""])
def test_bad_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(ValidationError):
        make_core(gateway={"tracing": {"otlpEndpoint": endpoint}})


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, False),
    ],
)
def test_gateway_reads_the_standard_variables(env: dict[str, str], on: bool) -> None:
    assert tracing.wanted(env) is on
