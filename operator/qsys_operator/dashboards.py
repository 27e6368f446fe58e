"""Grafana dashboards as code (Grafana Foundation SDK): gateway fleet/per-core and operator.

`python -m qsys_operator.dashboards` (`make dashboards`) writes
charts/qsys-operator/dashboards/*.json (shipped by the chart as ConfigMaps for Grafana's
dashboard sidecar); `--check` (`make dashboards-check`) fails when the committed JSON
differs from what this module builds (tests/unit/test_dashboards.py runs it). A build-time
tool beside crdgen: the operator itself never imports it, and the SDK is a development
dependency.
Panels and their meaning: docs/operations.md, "Dashboards".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders.common import ReduceDataOptions, VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard as DashboardBuilder
from grafana_foundation_sdk.builders.dashboard import (
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMapping,
    ValueMappingResult,
    VariableOption,
    VariableRefresh,
)

OUT = Path(__file__).resolve().parents[2] / "charts" / "qsys-operator" / "dashboards"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
GW = 'namespace=~"$namespace", service=~"$service"'
OP = 'namespace=~"$namespace", job=~"$job"'
RATE = "$__rate_interval"


def q(expr: str, legend: str) -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).datasource(DS)


def series(title: str, unit: str, description: str, *targets: Dataquery) -> Timeseries:
    panel = (
        Timeseries()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .height(8)
        .span(12)
        .fill_opacity(10)
        .legend(
            VizLegendOptions()
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
    )
    for i, target in enumerate(targets):
        panel = panel.with_target(target.ref_id(chr(ord("A") + i)))
    return panel


def stat(title: str, unit: str, description: str, target: Dataquery) -> Stat:
    return (
        Stat()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .height(4)
        .span(6)
        .graph_mode(BigValueGraphMode.AREA)
        .color_mode(BigValueColorMode.VALUE)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(target.ref_id("A"))
    )


def datasource_var() -> DatasourceVariable:
    return (
        DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(VariableOption(selected=True, text="Prometheus", value="prometheus"))
    )


def label_var(name: str, label: str, query: str) -> QueryVariable:
    return (
        QueryVariable(name)
        .label(label)
        .query(query)
        .datasource(DS)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def quantiles(metric: str, by: str, legend: str, selector: str = GW) -> list[Dataquery]:
    return [
        q(
            f"histogram_quantile({p}, sum by ({by}, le) (rate({metric}{{{selector}}}[{RATE}])))",
            f"p{int(p * 100)} {legend}",
        )
        for p in (0.5, 0.95, 0.99)
    ]


def board(title: str, uid: str, description: str) -> DashboardBuilder:
    """What both dashboards share: tags, refresh, time range, the data source variable."""
    return (
        DashboardBuilder(title)
        .uid(uid)
        .description(description)
        .tags(["qsys", uid])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-3h", "now")
        .with_variable(datasource_var())
    )


def gateway() -> DashboardBuilder:
    circuit: list[ValueMapping] = [
        ValueMap(
            {
                "0": ValueMappingResult(text="closed", color="green", index=0),
                "1": ValueMappingResult(text="half-open", color="yellow", index=1),
                "2": ValueMappingResult(text="open", color="red", index=2),
            }
        )
    ]
    up_map: list[ValueMapping] = [
        ValueMap(
            {
                "0": ValueMappingResult(text="down", color="red", index=0),
                "1": ValueMappingResult(text="up", color="green", index=1),
            }
        )
    ]
    red_below_one = (
        ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=None, color="red"), Threshold(value=1, color="green")])
    )
    return (
        board(
            "Q-SYS gateways",
            "qsys-gateway",
            "Gateways in front of Q-SYS Cores: the whole fleet, or one core with the "
            "namespace and service (<core>-gateway) variables.",
        )
        .with_variable(
            label_var("namespace", "Namespace", "label_values(qsys_gateway_upstream_up, namespace)")
        )
        .with_variable(
            label_var(
                "service",
                "Core gateway",
                'label_values(qsys_gateway_upstream_up{namespace=~"$namespace"}, service)',
            )
        )
        .with_row(Row("Overview"))
        .with_panel(
            stat(
                "Calls/s",
                "reqps",
                "Calls answered per second, every outcome.",
                q(f"sum(rate(qsys_gateway_requests_total{{{GW}}}[{RATE}]))", "calls/s"),
            )
        )
        .with_panel(
            stat(
                "Error ratio",
                "percentunit",
                "Share of calls ending in error, unavailable or timeout "
                "(the QSysGatewayHighErrorRatio alert).",
                q(
                    "sum(rate(qsys_gateway_requests_total"
                    f'{{{GW}, outcome=~"error|unavailable|timeout"}}[{RATE}]))'
                    f" / sum(rate(qsys_gateway_requests_total{{{GW}}}[{RATE}]))",
                    "errors",
                ),
            )
        )
        .with_panel(
            stat(
                "Pods connected to their Core",
                "short",
                "Gateway pods holding a logged-on QRC connection (QSysGatewayCoreUnreachable "
                "fires when a gateway has none).",
                q(f"sum(qsys_gateway_upstream_up{{{GW}}})", "connected"),
            ).thresholds(red_below_one)
        )
        .with_panel(
            stat(
                "Connected clients",
                "short",
                "WebSocket and raw QRC clients connected now.",
                q(f"sum(qsys_gateway_clients{{{GW}}})", "clients"),
            )
        )
        .with_row(Row("Traffic"))
        .with_panel(
            series(
                "Calls by outcome",
                "reqps",
                "ok, error, denied, unauthenticated, rate_limited, invalid, unavailable "
                "(circuit open), timeout.",
                q(
                    f"sum by (outcome) (rate(qsys_gateway_requests_total{{{GW}}}[{RATE}]))",
                    "{{outcome}}",
                ),
            )
        )
        .with_panel(
            series(
                "Calls by core",
                "reqps",
                "Call rate of each gateway (one per QSysCore).",
                q(
                    "sum by (namespace, service) "
                    f"(rate(qsys_gateway_requests_total{{{GW}}}[{RATE}]))",
                    "{{namespace}}/{{service}}",
                ),
            )
        )
        .with_row(Row("Latency"))
        .with_panel(
            series(
                "Call latency by transport",
                "s",
                "p50/p95/p99 from receiving a call to answering it, per transport "
                "(QSysGatewayHighLatency watches the p95 per core).",
                *quantiles(
                    "qsys_gateway_request_duration_seconds_bucket", "transport", "{{transport}}"
                ),
            )
        )
        .with_panel(
            series(
                "Core round trip by method",
                "s",
                "p50/p95/p99 of calls forwarded to the Core: the Core's share of the latency.",
                *quantiles(
                    "qsys_gateway_upstream_request_duration_seconds_bucket", "method", "{{method}}"
                ),
            )
        )
        .with_row(Row("Core connection"))
        .with_panel(
            series(
                "Upstream state per pod",
                "short",
                "1 while the pod holds a logged-on connection to its Core.",
                q(f"max by (pod) (qsys_gateway_upstream_up{{{GW}}})", "{{pod}}"),
            )
            .mappings(up_map)
            .min(0)
            .max(1)
        )
        .with_panel(
            series(
                "Reconnects to the Core",
                "short",
                "Reconnects per pod in each interval.",
                q(
                    "sum by (pod) "
                    f"(increase(qsys_gateway_upstream_reconnects_total{{{GW}}}[{RATE}]))",
                    "{{pod}}",
                ),
            )
        )
        .with_panel(
            series(
                "Circuit state per pod",
                "short",
                "Circuit breaker towards the Core: closed, half-open, open (calls refused "
                "with -32050 at once).",
                q(f"max by (pod) (qsys_gateway_circuit_state{{{GW}}})", "{{pod}}"),
            )
            .mappings(circuit)
            .min(0)
            .max(2)
        )
        .with_panel(
            series(
                "Rate-limit storage",
                "short",
                "1 while the rate-limit storage (Redis) answers; 0 means per-replica limits.",
                q(f"min by (pod) (qsys_gateway_ratelimit_storage_up{{{GW}}})", "{{pod}}"),
            )
            .mappings(up_map)
            .min(0)
            .max(1)
        )
        .with_row(Row("Clients and policy"))
        .with_panel(
            series(
                "Clients by transport",
                "short",
                "Connected WebSocket (ws) and raw QRC (qrc) clients.",
                q(f"sum by (transport) (qsys_gateway_clients{{{GW}}})", "{{transport}}"),
            )
        )
        .with_panel(
            series(
                "Authentication failures by transport",
                "short",
                "Failed authentications per second (QSysGatewayAuthFailureBurst).",
                q(
                    f"sum by (transport) (rate(qsys_gateway_auth_failures_total{{{GW}}}[{RATE}]))",
                    "{{transport}}",
                ),
            )
        )
        .with_panel(
            series(
                "Rate-limited calls by subject",
                "reqps",
                "Calls refused with -32029 (429), per AccessPolicy subject.",
                q(
                    "sum by (subject) (rate(qsys_gateway_requests_total"
                    f'{{{GW}, outcome="rate_limited"}}[{RATE}]))',
                    "{{subject}}",
                ),
            )
        )
        .with_panel(
            series(
                "Denied calls by subject",
                "reqps",
                "Calls the policy denied, and unauthenticated calls (subject '-').",
                q(
                    "sum by (subject, outcome) (rate(qsys_gateway_requests_total"
                    f'{{{GW}, outcome=~"denied|unauthenticated"}}[{RATE}]))',
                    "{{subject}} {{outcome}}",
                ),
            )
        )
        .with_panel(
            series(
                "Audit lines by decision",
                "short",
                "Audit lines written per second: allow, deny.",
                q(
                    f"sum by (decision) (rate(qsys_gateway_audit_events_total{{{GW}}}[{RATE}]))",
                    "{{decision}}",
                ),
            )
        )
        .with_row(Row("Change groups and config"))
        .with_panel(
            series(
                "Change groups",
                "short",
                "Change groups clients hold, and the groups the gateway holds on the Core.",
                q(f"sum by (service) (qsys_gateway_change_groups{{{GW}}})", "{{service}} clients"),
                q(
                    f"sum by (service) (qsys_gateway_core_change_groups{{{GW}}})",
                    "{{service}} on the Core",
                ),
            )
        )
        .with_panel(
            series(
                "Core polls",
                "reqps",
                "ChangeGroup.Poll calls the gateways make on their Core per second.",
                q(
                    f"sum by (service) (rate(qsys_gateway_core_polls_total{{{GW}}}[{RATE}]))",
                    "{{service}}",
                ),
            )
        )
        .with_panel(
            series(
                "Config reloads",
                "short",
                "Hot reloads of gateway.yaml by result; a failure keeps the previous config "
                "(QSysGatewayConfigReloadRefused).",
                q(
                    "sum by (result) "
                    f"(increase(qsys_gateway_config_reloads_total{{{GW}}}[{RATE}]))",
                    "{{result}}",
                ),
            )
        )
    )


def operator() -> DashboardBuilder:
    return (
        board(
            "Q-SYS operator",
            "qsys-operator",
            "The qsys-operator: reconciles, failures, durations, managed cores.",
        )
        .with_variable(
            label_var(
                "namespace", "Namespace", "label_values(qsys_operator_managed_cores, namespace)"
            )
        )
        .with_variable(
            label_var(
                "job",
                "Job",
                'label_values(qsys_operator_managed_cores{namespace=~"$namespace"}, job)',
            )
        )
        .with_panel(
            stat(
                "Managed cores",
                "short",
                "QSysCores the active replica manages (the standby reports 0).",
                q(f"sum(qsys_operator_managed_cores{{{OP}}})", "cores"),
            )
        )
        .with_panel(
            stat(
                "Failed reconciles (1h)",
                "short",
                "Reconciles that ended in error or permanent_error in the last hour.",
                q(
                    "sum(increase(qsys_operator_reconcile_total"
                    f'{{{OP}, result=~"error|permanent_error"}}[1h]))',
                    "failures",
                ),
            )
        )
        .with_panel(
            series(
                "Reconciles by kind and result",
                "ops",
                "Reconciles per second: success, error (retried), permanent_error (needs a "
                "spec change).",
                q(
                    f"sum by (kind, result) (rate(qsys_operator_reconcile_total{{{OP}}}[{RATE}]))",
                    "{{kind}} {{result}}",
                ),
            )
        )
        .with_panel(
            series(
                "Reconcile errors",
                "ops",
                "Failing reconciles per kind (QSysOperatorReconcileFailures).",
                q(
                    "sum by (kind) (rate(qsys_operator_reconcile_total"
                    f'{{{OP}, result=~"error|permanent_error"}}[{RATE}]))',
                    "{{kind}}",
                ),
            )
        )
        .with_panel(
            series(
                "Reconcile duration",
                "s",
                "p50/p95/p99 of a reconcile, per kind.",
                *quantiles(
                    "qsys_operator_reconcile_duration_seconds_bucket", "kind", "{{kind}}", OP
                ),
            )
        )
        .with_panel(
            series(
                "Managed cores per pod",
                "short",
                "QSysCores managed, per operator pod (peering: one active replica).",
                q(f"sum by (pod) (qsys_operator_managed_cores{{{OP}}})", "{{pod}}"),
            )
        )
    )


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        f"{name}.json": json.dumps(
            json.loads(JSONEncoder(sort_keys=True, indent=2).encode(build().build())),
            indent=2,
            sort_keys=True,
        )
        + "\n"
        for name, build in (("qsys-gateway", gateway), ("qsys-operator", operator))
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qsys_operator.dashboards", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when the JSON files drift")
    args = parser.parse_args(argv)
    files = render()
    if args.check:
        stale = sorted(
            name
            for name, text in files.items()
            if not (OUT / name).is_file() or (OUT / name).read_text("utf-8") != text
        )
        extra = sorted(p.name for p in OUT.glob("*.json") if p.name not in files)
        if stale or extra:
            print(
                f"dashboards drift: {', '.join(stale + extra)}; run `make dashboards`",
                file=sys.stderr,
            )
            return 1
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text, "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
