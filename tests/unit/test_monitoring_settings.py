"""Monitoring as kube-prometheus-stack runs it: operator-wide labels on every ServiceMonitor
the operator renders, and the NetworkPolicy's metrics sources from label selectors."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from qsys_operator.api import QSysCore
from qsys_operator.render import render_core_children
from qsys_operator.settings import OperatorSettings

NS_LABEL = "kubernetes.io/metadata.name"


def core(**monitoring: Any) -> QSysCore:
    return QSysCore.model_validate(
        {
            "metadata": {"name": "hall", "namespace": "av", "uid": "u", "generation": 1},
            "spec": {
                "core": {"host": "192.0.2.10"},
                "monitoring": {"serviceMonitor": {"enabled": True, **monitoring}},
            },
        }
    )


def metrics_from(settings: OperatorSettings) -> list[dict[str, Any]]:
    result = render_core_children(core(), [], settings)
    (np,) = [o for o in result.objects if o["kind"] == "NetworkPolicy"]
    rule = np["spec"]["ingress"][-1]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9090}]
    sources: list[dict[str, Any]] = rule["from"]
    return sources


def test_operator_wide_labels_reach_every_service_monitor_and_cannot_replace_selectors() -> None:
    settings = OperatorSettings.from_env(
        {"QSYS_MONITORING_LABELS": "release=kps,app.kubernetes.io/name=evil"}
    )
    sm = render_core_children(core(labels={"team": "av"}), [], settings).service_monitor
    assert sm is not None
    labels = sm["metadata"]["labels"]
    assert labels["release"] == "kps"
    assert labels["team"] == "av"
    assert labels["app.kubernetes.io/name"] == "qsys-gateway"


def test_core_labels_win_over_operator_wide_labels() -> None:
    settings = OperatorSettings(monitoring_labels={"release": "kps"})
    sm = render_core_children(core(labels={"release": "other"}), [], settings).service_monitor
    assert sm is not None
    assert sm["metadata"]["labels"]["release"] == "other"


def test_default_scraper_is_the_namespace_named_monitoring() -> None:
    assert metrics_from(OperatorSettings()) == [
        {"namespaceSelector": {"matchLabels": {NS_LABEL: "monitoring"}}},
        {"namespaceSelector": {"matchLabels": {NS_LABEL: "qsys-system"}}},
    ]


def test_scrapers_by_namespace_and_pod_selector_in_one_peer() -> None:
    raw = (
        '{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},'
        ' "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"},'
        ' "matchExpressions": [{"key": "prometheus", "operator": "Exists"}]}}'
    )
    settings = OperatorSettings.from_env({"QSYS_METRICS_SCRAPERS": raw})
    assert metrics_from(settings) == [
        {
            # One peer: both selectors must match the same pod (an AND, not an OR).
            "namespaceSelector": {"matchLabels": {NS_LABEL: "observability"}},
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/name": "prometheus"},
                "matchExpressions": [{"key": "prometheus", "operator": "Exists"}],
            },
        },
        {"namespaceSelector": {"matchLabels": {NS_LABEL: "qsys-system"}}},
    ]


def test_pod_selector_alone_applies_to_the_monitoring_namespace() -> None:
    settings = OperatorSettings.from_env(
        {
            "QSYS_MONITORING_NAMESPACE": "prom",
            "QSYS_METRICS_SCRAPERS": '{"podSelector": {"matchLabels": {"app": "prometheus"}}}',
        }
    )
    assert metrics_from(settings)[0] == {
        "namespaceSelector": {"matchLabels": {NS_LABEL: "prom"}},
        "podSelector": {"matchLabels": {"app": "prometheus"}},
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QSYS_METRICS_SCRAPERS": "{not json"}, "QSYS_METRICS_SCRAPERS is not JSON"),
        ({"QSYS_METRICS_SCRAPERS": '{"nsSelector": {}}'}, "nsSelector"),
        (
            {
                "QSYS_METRICS_SCRAPERS": (
                    '{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Like"}]}}'
                )
            },
            "operator",
        ),
        ({"QSYS_MONITORING_LABELS": "release"}, "expected key=value"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises((ValueError, ValidationError), match=message):
        OperatorSettings.from_env(env)
