"""The Argo CD health checks of docs/argocd/*.lua, run by a real Lua 5.1 interpreter
(Argo CD runs them with gopher-lua, which has Lua 5.1 semantics).

Argo CD sets the global `obj` to the resource and expects the chunk to return
{status = ..., message = ...}. The harness does the same with a Lua table literal
generated from each sample object.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import REPO, system_tool

SCRIPTS = REPO / "docs" / "argocd"
GITOPS = REPO / "docs" / "gitops.md"


def lua_literal(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string of ASCII escapes is a valid Lua string
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        items = (f"[{json.dumps(k)}] = {lua_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(type(value))


def health(script: str, obj: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    harness = tmp_path / "harness.lua"
    harness.write_text(
        f"obj = {lua_literal(obj)}\n"
        f"local chunk = assert(loadfile({json.dumps(str(SCRIPTS / script))}))\n"
        "local hs = chunk()\n"
        'assert(type(hs) == "table", "the script must return a table")\n'
        'assert(type(hs.status) == "string" and type(hs.message) == "string")\n'
        'io.write(hs.status, "\\n", hs.message)\n',
        "utf-8",
    )
    result = subprocess.run(
        [str(system_tool("lua5.1")), str(harness)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    status, _, message = result.stdout.partition("\n")
    return status, message


def cond(ctype: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2025-01-01T00:00:00Z",
        "observedGeneration": 2,
    }


def obj(kind: str, status: dict[str, Any] | None, generation: int = 2) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "qsys.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "hall", "namespace": "av", "generation": generation},
        "spec": {},
    }
    if status is not None:
        body["status"] = status
    return body


CORE_CASES = [
    ("no status yet", None, 1, "Progressing", "Waiting for the operator"),
    (
        "old generation",
        {"observedGeneration": 1, "conditions": [cond("Ready", "True", "Ready", "ok")]},
        2,
        "Progressing",
        "generation 2",
    ),
    (
        "ready",
        {
            "observedGeneration": 2,
            "conditions": [
                cond("Ready", "True", "Ready", "gateway available and connected to the Core"),
                cond("GatewayAvailable", "True", "ReplicasAvailable", "2/2 available"),
                cond("CoreConnected", "True", "Connected", "Core 10.0.0.5:1710 is Active"),
            ],
            "subjects": 3,
        },
        2,
        "Healthy",
        "gateway available and connected to the Core",
    ),
    (
        "gateway rolling out",
        {
            "observedGeneration": 2,
            "conditions": [
                cond("Ready", "False", "GatewayUnavailable", "0/2 available"),
                cond("GatewayAvailable", "False", "NoReplicaAvailable", "0/2 available"),
                cond("CoreConnected", "Unknown", "NoReadyGateway", "no Ready gateway pod to ask"),
            ],
        },
        2,
        "Progressing",
        "GatewayUnavailable: 0/2 available",
    ),
    (
        "core unreachable",
        {
            "observedGeneration": 2,
            "conditions": [
                cond("Ready", "False", "CoreNotConnected", "cannot reach the Core"),
                cond("GatewayAvailable", "True", "ReplicasAvailable", "2/2 available"),
                cond("CoreConnected", "False", "Unreachable", "cannot reach 10.0.0.5:1710"),
            ],
        },
        2,
        "Degraded",
        "Unreachable: cannot reach 10.0.0.5:1710",
    ),
    (
        "invalid spec",
        {
            "observedGeneration": 2,
            "conditions": [cond("Ready", "False", "InvalidSpec", "fix the spec: coreCIDRs")],
        },
        2,
        "Degraded",
        "InvalidSpec: fix the spec: coreCIDRs",
    ),
    (
        "apply rejected",
        {
            "observedGeneration": 2,
            "conditions": [cond("Ready", "False", "ApplyRejected", "forbidden")],
        },
        2,
        "Degraded",
        "ApplyRejected",
    ),
    (
        "image not allowed",
        {
            "observedGeneration": 2,
            "conditions": [cond("Ready", "False", "ImageNotAllowed", "evil.example/gw:1")],
        },
        2,
        "Degraded",
        "ImageNotAllowed: evil.example/gw:1",
    ),
    ("status without conditions", {"observedGeneration": 2}, 2, "Progressing", "Ready condition"),
    (
        "rollout under way, old pods still serving",
        {
            "observedGeneration": 2,
            "conditions": [
                cond("Ready", "True", "Ready", "gateway available and connected to the Core"),
                cond("GatewayAvailable", "True", "ReplicasAvailable", "2/2 available"),
                cond("Reconciling", "True", "GatewayRollingOut", "1 of 2 gateway replicas updated"),
            ],
        },
        2,
        "Progressing",
        "GatewayRollingOut: 1 of 2 gateway replicas updated",
    ),
    (
        "stalled on a Secret",
        {
            "observedGeneration": 2,
            "conditions": [
                cond("Ready", "False", "SecretNotAccepted", "Secret creds cannot be used"),
                cond("Stalled", "True", "SecretNotAccepted", "Secret creds cannot be used"),
            ],
        },
        2,
        "Degraded",
        "SecretNotAccepted: Secret creds cannot be used",
    ),
]

POLICY_CASES = [
    ("no status yet", None, 1, "Progressing", "Waiting for the operator"),
    (
        "old generation",
        {"observedGeneration": 1, "conditions": [cond("Ready", "True", "Rendered", "ok")]},
        2,
        "Progressing",
        "generation 2",
    ),
    (
        "ready",
        {
            "observedGeneration": 2,
            "conditions": [
                cond("Ready", "True", "Rendered", "2 subject(s) active"),
                cond("Bound", "True", "CoreFound", "bound to QSysCore hall"),
            ],
            "tokenSecrets": {"panel": "p-panel-token"},
        },
        2,
        "Healthy",
        "2 subject(s) active",
    ),
    (
        "core missing",
        {
            "observedGeneration": 2,
            "conditions": [
                cond("Ready", "False", "CoreNotFound", "QSysCore hall not found"),
                cond("Bound", "False", "CoreNotFound", "QSysCore hall not found in namespace av"),
            ],
        },
        2,
        "Degraded",
        "CoreNotFound: QSysCore hall not found in namespace av",
    ),
    (
        "subject conflict",
        {
            "observedGeneration": 2,
            "conditions": [
                cond("Ready", "False", "SubjectConflict", "subject panel left out"),
                cond("Bound", "True", "CoreFound", "bound to QSysCore hall"),
            ],
        },
        2,
        "Degraded",
        "SubjectConflict: subject panel left out",
    ),
    (
        "stalled on a token Secret",
        {
            "observedGeneration": 2,
            "conditions": [
                cond("Ready", "False", "TokenProblem", "subject panel: Secret p not found"),
                cond("Bound", "True", "CoreFound", "bound to QSysCore hall"),
                cond("Stalled", "True", "TokenProblem", "subject panel: Secret p not found"),
            ],
        },
        2,
        "Degraded",
        "TokenProblem: subject panel: Secret p not found",
    ),
    (
        "ready unknown",
        {"observedGeneration": 2, "conditions": [cond("Ready", "Unknown", "", "")]},
        2,
        "Progressing",
        "",
    ),
]


@pytest.mark.parametrize(
    ("status", "generation", "want", "message"),
    [c[1:] for c in CORE_CASES],
    ids=[c[0] for c in CORE_CASES],
)
def test_qsyscore_health(
    status: dict[str, Any] | None, generation: int, want: str, message: str, tmp_path: Path
) -> None:
    got, text = health("qsyscore-health.lua", obj("QSysCore", status, generation), tmp_path)
    assert got == want
    assert message in text


@pytest.mark.parametrize(
    ("status", "generation", "want", "message"),
    [c[1:] for c in POLICY_CASES],
    ids=[c[0] for c in POLICY_CASES],
)
def test_accesspolicy_health(
    status: dict[str, Any] | None, generation: int, want: str, message: str, tmp_path: Path
) -> None:
    got, text = health("accesspolicy-health.lua", obj("AccessPolicy", status, generation), tmp_path)
    assert got == want
    assert message in text


def test_the_interpreter_is_lua_5_1() -> None:
    out = subprocess.run(
        [str(system_tool("lua5.1")), "-e", "io.write(_VERSION)"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert out.stdout == "Lua 5.1"


@pytest.mark.parametrize("script", ["qsyscore-health.lua", "accesspolicy-health.lua"])
def test_gitops_doc_carries_the_tested_scripts(script: str) -> None:
    """docs/gitops.md shows the scripts verbatim, so what users paste is what is tested."""
    doc = GITOPS.read_text("utf-8")
    body = (SCRIPTS / script).read_text("utf-8")
    indented = "\n".join(("    " + line) if line else "" for line in body.splitlines())
    assert indented in doc, f"docs/gitops.md does not carry docs/argocd/{script} verbatim"


@pytest.mark.parametrize("manifest", ["applications.yaml", "bundle.yaml", "chart-registry.yaml"])
def test_gitops_doc_carries_the_tested_applications(manifest: str) -> None:
    """The Applications of docs/gitops.md are the files tests/e2e/test_gitops.py applies."""
    doc = GITOPS.read_text("utf-8")
    body = (SCRIPTS / manifest).read_text("utf-8")
    assert f"```yaml\n{body}```" in doc, f"docs/gitops.md does not carry {manifest}"


def manifests(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((SCRIPTS / name).read_text("utf-8")))


def test_the_chart_registry_settings_match_the_applications() -> None:
    """docs/argocd/chart-registry.yaml names the registry as the Applications do: a
    Helm repository with OCI on, the URL without a scheme (Argo CD takes `oci://...` for
    a plain OCI source, not a Helm chart), every chart source's repoURL, permitted by the
    AppProject, and its CA keyed by the host name alone (Argo CD looks certificates up
    by host, without the port)."""
    secret, certs = manifests("chart-registry.yaml")
    project, operator, _site = manifests("applications.yaml")
    (bundle,) = manifests("bundle.yaml")
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["namespace"] == "argocd"
    assert secret["metadata"]["labels"] == {"argocd.argoproj.io/secret-type": "repository"}
    repo = secret["stringData"]
    assert repo["type"] == "helm"
    assert repo["enableOCI"] == "true"
    url = repo["url"]
    assert "://" not in url
    assert url in project["spec"]["sourceRepos"]
    chart = yaml.safe_load((REPO / "charts/qsys-operator/Chart.yaml").read_text("utf-8"))
    sources = [operator["spec"]["source"], *bundle["spec"]["sources"]]
    charts = [s for s in sources if "chart" in s]
    assert len(charts) == 2
    for source in charts:
        assert source["repoURL"] == url
        assert source["chart"] == chart["name"]
    assert certs["kind"] == "ConfigMap"
    assert certs["metadata"]["name"] == "argocd-tls-certs-cm"
    assert certs["metadata"]["namespace"] == "argocd"
    assert certs["metadata"]["labels"]["app.kubernetes.io/part-of"] == "argocd"
    host = url.split("/", 1)[0].rsplit(":", 1)[0]
    assert list(certs["data"]) == [host]
    assert certs["data"][host].startswith("-----BEGIN CERTIFICATE-----\n")
