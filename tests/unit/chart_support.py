"""Running the pinned tools (helm, promtool, kubectl) on the chart; shared by the chart tests.

A missing tool fails the test with the command that builds it; never a skip.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from qsys_testkit.checkout import pinned_tool, run_checked

tool = pinned_tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "qsys-operator"
# What a cluster with the Prometheus Operator CRDs reports (helm --api-versions).
MONITORING_APIS = (
    "monitoring.coreos.com/v1",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)


def system_tool(name: str) -> Path:
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run `make install` (hack/install-system-deps.sh)")
    return Path(found)


def run(args: Sequence[str | Path], timeout: float = 60, **kwargs: Any) -> str:
    """stdout of a command that must succeed; its stderr in the failure message otherwise."""
    return run_checked(args, timeout, **kwargs)


def helm_template_args(
    *,
    namespace: str = "qsys-system",
    release: str = "qsys",
    monitoring: bool = False,
    api_versions: Sequence[str] = (),
    values: Sequence[str] = (),
) -> list[str | Path]:
    args: list[str | Path] = [
        tool("helm", "helm"),
        "template",
        release,
        CHART,
        "--namespace",
        namespace,
    ]
    for api in (*(MONITORING_APIS if monitoring else ()), *api_versions):
        args += ["--api-versions", api]
    for value in values:
        args += ["--set", value]
    return args


def render(**kwargs: Any) -> str:
    return run(helm_template_args(**kwargs))


def manifests(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]
