"""What a platform team checks before adopting the chart: umbrella-chart `global` values,
nothing written into `default`, monitoring labels and scrapers for kube-prometheus-stack,
the ClusterRoleBinding guard, LICENSE, Artifact Hub metadata, icon, NOTES that lead to
Ready, and examples that bring their own Core and a token that passes the rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import CHART, REPO, by_kind, helm_template_args, manifests, render, run, tool

from qsys_operator.api import CLIENT_TOKEN, SECRET_TYPE_LABEL, AccessPolicy, QSysCore
from qsys_operator.settings import ENV, OperatorSettings
from qsys_operator.tokens import token_weakness

pytestmark = pytest.mark.tools("helm")

CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text("utf-8"))
APP_VERSION = CHART_META["appVersion"]
VAP = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
SA_USER = "system:serviceaccount:qsys-system:qsys-qsys-operator"
# https://artifacthub.io/docs/topics/annotations/helm/
AH_CATEGORIES = {
    "ai-machine-learning",
    "database",
    "integration-delivery",
    "monitoring-logging",
    "networking",
    "security",
    "storage",
    "streaming-messaging",
}
AH_CAPABILITIES = {
    "Basic Install",
    "Seamless Upgrades",
    "Full Lifecycle",
    "Deep Insights",
    "Auto Pilot",
}


def env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def annotation(name: str) -> Any:
    return yaml.safe_load(CHART_META["annotations"][f"artifacthub.io/{name}"])


def examples() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((REPO / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text("utf-8"))
        if doc
    ]


# ---- umbrella charts and namespaces ------------------------------------------------------


def test_schema_accepts_global_values_of_an_umbrella_chart(tmp_path: Path) -> None:
    values = tmp_path / "umbrella.yaml"
    values.write_text(
        "global:\n  imageRegistry: registry.example\n  imagePullSecrets: [{name: pull}]\n"
    )
    run([tool("helm", "helm"), "lint", CHART, "--strict", "-f", values])
    assert manifests(run([*helm_template_args(), "-f", values]))
    # Still strict elsewhere: a typo outside `global` is refused.
    args = helm_template_args(values=["monitoring.lables.release=kps"])
    result = run_failing(args)
    assert "lables" in result


def run_failing(args: list[str | Path]) -> str:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0, result.stdout[-2000:]
    return result.stderr


@pytest.mark.parametrize(
    "values",
    [[], ["watchNamespaces={team-a,team-b}", "replicas=2"], ["grafanaDashboards.enabled=true"]],
    ids=["cluster-wide", "namespaced", "dashboards"],
)
def test_nothing_is_written_into_default_unless_asked(values: list[str]) -> None:
    docs = manifests(render(monitoring=True, api_versions=[VAP], values=values))
    namespaces = {d["metadata"].get("namespace") for d in docs} - {None}
    assert "default" not in namespaces
    assert namespaces <= {"qsys-system", "team-a", "team-b"}
    # Asked: the release namespace is where the user installs.
    asked = manifests(render(namespace="default"))
    assert {d["metadata"].get("namespace") for d in asked} - {None} == {"default"}


# ---- kube-prometheus-stack -----------------------------------------------------------------


def test_monitoring_labels_reach_the_charts_objects_and_the_operator() -> None:
    docs = manifests(
        render(
            monitoring=True,
            values=[
                "monitoring.labels.release=kps",
                "serviceMonitor.labels.team=av",
                "prometheusRule.labels.release=rules-kps",
            ],
        )
    )
    (sm,) = by_kind(docs, "ServiceMonitor")
    (rule,) = by_kind(docs, "PrometheusRule")
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert sm["metadata"]["labels"]["team"] == "av"
    # The object's own labels win over monitoring.labels; the chart's cannot be replaced.
    assert rule["metadata"]["labels"]["release"] == "rules-kps"
    assert rule["metadata"]["labels"]["app.kubernetes.io/name"] == "qsys-operator"
    assert env(docs)[ENV["monitoring_labels"]] == "release=kps"
    overridden = manifests(
        render(monitoring=True, values=["monitoring.labels.app\\.kubernetes\\.io/name=x"])
    )
    for kind in ("ServiceMonitor", "PrometheusRule"):
        (obj,) = by_kind(overridden, kind)
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "qsys-operator"


def test_scrapers_pass_to_the_operator_as_a_selector_it_reads(tmp_path: Path) -> None:
    values = tmp_path / "kps.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "monitoring": {
                    "labels": {"release": "kps"},
                    "scrapers": {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "observability"}
                        },
                        "podSelector": {
                            "matchExpressions": [
                                {
                                    "key": "app.kubernetes.io/name",
                                    "operator": "In",
                                    "values": ["prometheus"],
                                }
                            ]
                        },
                    },
                }
            }
        )
    )
    docs = manifests(run([*helm_template_args(), "-f", values]))
    settings = OperatorSettings.from_env(env(docs))
    scrapers = settings.metrics_scrapers
    assert scrapers.namespaceSelector.matchLabels == {
        "kubernetes.io/metadata.name": "observability"
    }
    assert scrapers.podSelector.matchExpressions[0].values == ("prometheus",)
    assert settings.monitoring_labels == {"release": "kps"}
    # Defaults: the namespace named monitoringNamespace, any pod in it.
    default = OperatorSettings.from_env(env(manifests(render())))
    assert default.metrics_scrapers.namespaceSelector.empty
    assert default.monitoring_namespace == "monitoring"
    bad = helm_template_args(
        values=["monitoring.scrapers.podSelector.matchExpressions[0].operator=Like"]
    )
    assert "operator" in run_failing(bad)


# ---- the ClusterRoleBinding guard ----------------------------------------------------------


def test_binding_guard_is_an_admission_policy_for_the_operator_only() -> None:
    docs = manifests(render(api_versions=[VAP]))
    guard = [d for d in docs if d["metadata"]["name"].endswith("-own-bindings")]
    (policy,) = by_kind(guard, "ValidatingAdmissionPolicy")
    (binding,) = by_kind(guard, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["clusterrolebindings"]
    assert set(rule["operations"]) == {"CREATE", "UPDATE", "DELETE"}
    (condition,) = spec["matchConditions"]
    assert condition["expression"] == f"request.userInfo.username == '{SA_USER}'"
    for validation in spec["validations"]:
        assert "qsys-gateway-tokenreview:" in validation["expression"]
        assert "'qsys-qsys-operator-gateway-tokenreview'" in validation["expression"]
    off = manifests(render(api_versions=[VAP], values=["rbacGuard.enabled=false"]))
    assert not [d for d in off if d["metadata"]["name"].endswith("-own-bindings")]


# ---- license, Artifact Hub, icon, NOTES -----------------------------------------------------


def test_license_file_is_the_one_pyproject_names() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]
    assert project["license"] == "Apache-2.0"  # an SPDX expression (PEP 639)
    text = (REPO / "LICENSE").read_text("utf-8")
    assert "Apache License" in text[:200]
    assert "Version 2.0, January 2004" in text[:300]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert CHART_META["annotations"]["artifacthub.io/license"] == "Apache-2.0"


def test_artifact_hub_annotations_have_their_documented_shapes() -> None:
    meta = CHART_META["annotations"]
    assert meta["artifacthub.io/category"] in AH_CATEGORIES
    assert meta["artifacthub.io/operator"] == "true"
    assert meta["artifacthub.io/operatorCapabilities"] in AH_CAPABILITIES
    for link in annotation("links"):
        assert set(link) == {"name", "url"}
        assert link["url"].startswith("https://")
    images = annotation("images")
    assert {i["name"] for i in images} == {"operator", "gateway"}
    values = yaml.safe_load((CHART / "values.yaml").read_text("utf-8"))
    for image in images:
        assert set(image) <= {"name", "image", "platforms", "whitelisted"}
        repo = values["image" if image["name"] == "operator" else "gatewayImage"]["repository"]
        assert image["image"] == f"{repo}:{APP_VERSION}"
    crds = {
        (d["spec"]["names"]["kind"], d["metadata"]["name"], v["name"])
        for path in sorted((CHART.parent.parent / "crds").glob("*.yaml"))
        for d in [yaml.safe_load(path.read_text("utf-8"))]
        for v in d["spec"]["versions"]
        if v.get("served")
    }
    listed = annotation("crds")
    for crd in listed:
        assert set(crd) == {"kind", "version", "name", "displayName", "description"}
    assert {(c["kind"], c["name"], c["version"]) for c in listed} == crds
    for example in annotation("crdsExamples"):
        model = {"QSysCore": QSysCore, "AccessPolicy": AccessPolicy}[example["kind"]]
        body = example | {"metadata": example["metadata"] | {"namespace": "x", "uid": "u"}}
        model.model_validate(body)


def test_icon_is_a_published_svg_of_this_repository() -> None:
    icon = CHART_META["icon"]
    prefix = "https://raw.githubusercontent.com/qsys-operator/qsys-operator/main/"
    assert icon.startswith(prefix)
    root = ET.parse(REPO / icon.removeprefix(prefix)).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


def render_notes(tmp_path: Path, values: list[str]) -> str:
    """NOTES.txt as `helm install` prints it. `helm install --dry-run=client` still asks a
    cluster whether it is reachable, so a copy of the chart carries NOTES.txt as a
    template of a YAML block scalar that `helm template` renders."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text("utf-8")
    indented = "".join(f"  {line}" for line in notes.splitlines(keepends=True))
    (chart / "templates" / "zz-notes.yaml").write_text(f"notes: |\n{indented}", "utf-8")
    args: list[str | Path] = [tool("helm", "helm"), "template", "qsys", chart, "-n", "qsys-system"]
    for value in values:
        args += ["--set", value]
    args += ["--show-only", "templates/zz-notes.yaml"]
    text: str = yaml.safe_load(run(args))["notes"]
    return text


@pytest.mark.parametrize(
    ("values", "namespace"),
    [([], "qsys-demo"), (["watchNamespaces={rooms}"], "rooms")],
    ids=["cluster-wide", "namespaced"],
)
def test_notes_lead_to_ready(values: list[str], namespace: str, tmp_path: Path) -> None:
    notes = render_notes(tmp_path, values)
    assert "rollout status deployment/qsys-qsys-operator" in notes
    assert f"kubectl -n {namespace} apply -f examples/" in notes
    ready = f"kubectl -n {namespace} wait qsyscore/auditorium --for=condition=Ready --timeout=2m"
    assert ready in notes
    assert "describe qsyscore/auditorium" in notes
    assert "docs/install.md" in notes
    assert ("kubectl create namespace qsys-demo" in notes) == (not values)


# ---- examples ----------------------------------------------------------------------------


def test_examples_bring_their_own_core_and_a_token_that_passes_the_rules() -> None:
    docs = examples()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["AccessPolicy", "Deployment", "QSysCore", "Secret", "Service"]
    by = {d["kind"]: d for d in docs}
    core = QSysCore.model_validate(
        by["QSysCore"] | {"metadata": by["QSysCore"]["metadata"] | {"namespace": "x", "uid": "u"}}
    )
    # The QSysCore points at the simulator's Service, on its port.
    service = by["Service"]
    assert core.spec.core.host == service["metadata"]["name"]
    assert core.spec.core.port in [p["port"] for p in service["spec"]["ports"]]
    (container,) = by["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/qsys-operator/core-sim:{APP_VERSION}"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The policy's room panel names the example Secret, which passes marker and entropy rules.
    policy = AccessPolicy.model_validate(
        by["AccessPolicy"]
        | {"metadata": by["AccessPolicy"]["metadata"] | {"namespace": "x", "uid": "u"}}
    )
    assert policy.spec.coreRef.name == core.metadata.name
    refs = {
        s.tokenSecretRef.name: s.tokenSecretRef.key
        for s in policy.spec.subjects
        if s.tokenSecretRef
    }
    secret = by["Secret"]
    assert refs == {secret["metadata"]["name"]: "token"}
    assert secret["metadata"]["labels"][SECRET_TYPE_LABEL] == CLIENT_TOKEN
    assert token_weakness(secret["stringData"]["token"]) is None
    # Applied into the namespace kubectl chooses: no example names one.
    assert all("namespace" not in d["metadata"] for d in docs)
    json.dumps(docs)
