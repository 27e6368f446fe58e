"""charts/qsys-operator with the real (pinned) helm: lint, deterministic render,
RBAC shape and least privilege, schema validation, CRD copies, image defaults."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml
from chart_support import (
    CHART,
    REPO,
    by_kind,
    helm_template_args,
    manifests,
    render,
    run,
    tool,
)

from qsys_operator.kinds import CHILDREN
from qsys_operator.settings import DEFAULT_GATEWAY_IMAGE, ENV, OperatorSettings

RBAC_KINDS = ("Role", "ClusterRole")
TOKEN_REVIEW_ROLE = "qsys-qsys-operator-gateway-tokenreview"
TENANT_ROLES = ("qsys-qsys-operator-view", "qsys-qsys-operator-edit")
SHIPPED_ROLES = (*TENANT_ROLES, TOKEN_REVIEW_ROLE)
"""Roles the chart ships for others (tenants, the gateways): checked apart."""
API_ENDPOINTS_RULE = {
    "apiGroups": ["discovery.k8s.io"],
    "resources": ["endpointslices"],
    "verbs": ["get"],
    "resourceNames": ["kubernetes"],
}
PROOF_KEY_RULES = [
    {
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": ["get"],
        "resourceNames": ["qsys-qsys-operator-token-proof-key"],
    },
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
]
GATEWAY_IDENTITY_RULES = [
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["clusterrolebindings"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["clusterroles"],
        "verbs": ["bind"],
        "resourceNames": [TOKEN_REVIEW_ROLE],
    },
]


def _operator_roles(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in by_kind(docs, kind) if d["metadata"]["name"] not in SHIPPED_ROLES]


def _rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operator's own grants (the tenant roles are checked apart)."""
    return [rule for kind in RBAC_KINDS for d in _operator_roles(docs, kind) for rule in d["rules"]]


def _env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_helm_lint_passes_in_both_modes() -> None:
    helm = tool("helm", "helm")
    run([helm, "lint", CHART, "--strict"])
    run([helm, "lint", CHART, "--strict", "--set", "watchNamespaces={team-a,team-b}"])


def test_rendering_twice_gives_identical_output() -> None:
    for kwargs in (
        {},
        {"monitoring": True, "values": ["replicas=2", "watchNamespaces={a,b}"]},
    ):
        first, second = render(**kwargs), render(**kwargs)
        assert first == second
        assert first.strip()


def _api_endpoints_role(docs: list[dict[str, Any]]) -> None:
    """In both modes: the API server's EndpointSlice (by name) is read through the
    operator's ClusterRole, so nothing is written into `default`. Namespaced, the only
    Role in the release namespace is the token proof key's (cluster-wide, the
    ClusterRole's Secret rules cover it)."""
    assert not [d for d in docs if d["metadata"].get("namespace") == "default"]
    cluster_rules = [r for d in _operator_roles(docs, "ClusterRole") for r in d["rules"]]
    assert API_ENDPOINTS_RULE in cluster_rules
    own = [r for r in by_kind(docs, "Role") if r["metadata"]["namespace"] == "qsys-system"]
    assert [r["rules"] for r in own] in ([], [PROOF_KEY_RULES])


def _namespaced(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Roles and bindings in the watched namespaces (not the proof key's)."""
    return [d for d in by_kind(docs, kind) if d["metadata"].get("namespace") != "qsys-system"]


def test_cluster_wide_install_uses_cluster_roles() -> None:
    docs = manifests(render())
    assert not _namespaced(docs, "Role")
    assert not _namespaced(docs, "RoleBinding")
    _api_endpoints_role(docs)
    (role,) = _operator_roles(docs, "ClusterRole")
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "qsys-qsys-operator", "namespace": "qsys-system"}
    ]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"qsyscores", "accesspolicies", "deployments", "secrets"} <= resources
    assert role["rules"][-2:] == GATEWAY_IDENTITY_RULES
    assert _env(docs)[ENV["watch_namespaces"]] == ""


def test_namespaced_install_uses_roles_per_namespace() -> None:
    docs = manifests(render(values=["watchNamespaces={team-a,team-b}"]))
    _api_endpoints_role(docs)
    roles = _namespaced(docs, "Role")
    bindings = _namespaced(docs, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    # The only cluster-wide grants: reading CRDs, listing/watching namespaces (Kopf
    # follows the watched namespaces), and the gateways' TokenReview bindings;
    # cluster-scoped, so no Role can hold them.
    (cluster_role,) = _operator_roles(docs, "ClusterRole")
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        API_ENDPOINTS_RULE,
        *GATEWAY_IDENTITY_RULES,
    ]
    assert _env(docs)[ENV["watch_namespaces"]] == "team-a,team-b"


def test_peering_only_with_two_replicas() -> None:
    single = manifests(render())
    (dep,) = by_kind(single, "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--standalone" in args
    # Never two standalone operators at once (an upgrade would surge the new beside the old).
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert not by_kind(single, "PodDisruptionBudget")
    assert not any("kopf.dev" in rule["apiGroups"] for rule in _rules(single))

    for extra, plural in (([], "clusterkopfpeerings"), (["watchNamespaces={a}"], "kopfpeerings")):
        docs = manifests(render(values=["replicas=2", *extra]))
        (dep,) = by_kind(docs, "Deployment")
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--standalone" not in args
        assert "--peering=qsys-qsys-operator" in args
        assert dep["spec"]["replicas"] == 2
        assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
        assert by_kind(docs, "PodDisruptionBudget")
        peering = [r for r in _rules(docs) if "kopf.dev" in r["apiGroups"]]
        assert [r["resources"] for r in peering] == [[plural]]


@pytest.mark.parametrize(
    "values",
    [[], ["watchNamespaces={a,b}", "replicas=2"], ["replicas=3"]],
    ids=["cluster-wide", "namespaced", "peering"],
)
def test_no_wildcards_and_no_escalation_verbs(values: list[str]) -> None:
    rules = _rules(manifests(render(monitoring=True, values=values)))
    assert rules
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
            assert all("*" not in item for item in rule[field]), rule
        if "bind" in rule["verbs"]:
            # Only the chart's TokenReview role may be bound (by name), nothing else.
            assert rule == GATEWAY_IDENTITY_RULES[1], rule
            continue
        assert not set(rule["verbs"]) & {"escalate", "bind", "impersonate", "deletecollection"}
        assert "nonResourceURLs" not in rule
        # Secrets: the operator never updates or lists across the cluster beyond its watch.
        assert "update" not in rule["verbs"], rule
        assert not {"roles", "clusterroles", "rolebindings", "nodes"} & set(rule["resources"])
        if "namespaces" in rule["resources"]:
            assert rule["verbs"] == ["list", "watch"], rule


def test_monitoring_objects_follow_capabilities_unless_forced() -> None:
    def kinds(**kwargs: Any) -> set[str]:
        return {doc["kind"] for doc in manifests(render(**kwargs))}

    assert not {"ServiceMonitor", "PrometheusRule"} & kinds()
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds(monitoring=True)
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds(
        values=["serviceMonitor.enabled=true", "prometheusRule.enabled=true"]
    )
    # Only the ServiceMonitor CRD installed: no PrometheusRule (the install would fail).
    only_sm = kinds(
        api_versions=["monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor"]
    )
    assert "ServiceMonitor" in only_sm
    assert "PrometheusRule" not in only_sm
    assert not {"ServiceMonitor", "PrometheusRule"} & kinds(
        monitoring=True, values=["serviceMonitor.enabled=false", "prometheusRule.enabled=false"]
    )


def test_deployment_is_restricted_and_probed() -> None:
    docs = manifests(render(values=["image.tag=1.2.3"]))
    (dep,) = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/qsys-operator/operator:1.2.3"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsUser"] == 10001
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]
    assert pod["serviceAccountName"] == "qsys-qsys-operator"


def test_env_names_are_the_ones_the_operator_reads() -> None:
    env = _env(manifests(render()))
    known = set(ENV.values())
    unknown = {name for name in env if name.startswith("QSYS_")} - known
    assert not unknown, f"the chart sets env the operator does not read: {unknown}"
    assert env[ENV["operator_namespace"]] == "qsys-system"


def test_gateway_image_default_matches_operator_default() -> None:
    env = _env(manifests(render()))
    assert env[ENV["gateway_image"]] == DEFAULT_GATEWAY_IMAGE
    env = _env(
        manifests(render(values=["gatewayImage.repository=r.example/gw", "gatewayImage.tag=9"]))
    )
    assert env[ENV["gateway_image"]] == "r.example/gw:9"


def test_tenant_safety_settings_reach_the_operator() -> None:
    """Defaults: the chart's own gateway repository only, no egress namespaces, unbound
    credentials refused; each value reaches the operator's setting unchanged."""
    env = _env(manifests(render()))
    defaults = OperatorSettings.from_env(env)
    assert env[ENV["gateway_allowed_images"]] == ""
    assert [str(a) for a in defaults.allowed_images] == ["ghcr.io/qsys-operator/gateway"]
    assert defaults.gateway_egress_namespaces == ()
    assert defaults.allow_unbound_credentials is False
    digest = "sha256:" + "ab" * 32
    env = _env(
        manifests(
            render(
                values=[
                    f"gatewayImage.digest={digest}",
                    "gatewayEgress.namespaces={monitoring,redis}",
                    "coreCredentials.allowUnbound=true",
                ]
            )
        )
    )
    settings = OperatorSettings.from_env(env)
    assert settings.gateway_image == f"ghcr.io/qsys-operator/gateway@{digest}"
    assert [str(a) for a in settings.allowed_images] == [f"ghcr.io/qsys-operator/gateway@{digest}"]
    assert settings.gateway_egress_namespaces == ("monitoring", "redis")
    assert settings.allow_unbound_credentials is True
    env = _env(
        manifests(render(values=[f"gatewayImage.allowed={{r.example/gw,m.example/gw@{digest}}}"]))
    )
    assert [str(a) for a in OperatorSettings.from_env(env).allowed_images] == [
        "r.example/gw",
        f"m.example/gw@{digest}",
    ]


def test_gateway_pod_pull_secrets_and_priority_class_reach_the_operator() -> None:
    env = _env(manifests(render()))
    assert ENV["gateway_image_pull_secrets"] not in env
    assert ENV["gateway_priority_class_name"] not in env
    values = [
        "gatewayPods.imagePullSecrets[0].name=regcred",
        "gatewayPods.imagePullSecrets[1].name=mirror",
        "gatewayPods.priorityClassName=av-critical",
    ]
    env = _env(manifests(render(values=values)))
    settings = OperatorSettings.from_env(env)
    assert settings.gateway_image_pull_secrets == ("regcred", "mirror")
    assert settings.gateway_priority_class_name == "av-critical"


def test_core_limit_is_off_by_default_and_reaches_the_operator() -> None:
    assert _env(manifests(render()))[ENV["max_cores_per_namespace"]] == "0"
    env = _env(manifests(render(values=["maxCoresPerNamespace=25"])))
    assert OperatorSettings.from_env(env).max_cores_per_namespace == 25


@pytest.mark.parametrize(
    "value",
    [
        "gatewayImage.allowed={r.example/gw:latest}",
        "gatewayImage.digest=latest",
        "gatewayEgress.namespaces={Not_A_Namespace}",
        "coreCredentials.allowUnbound=maybe",
        "gatewayPods.priorityClassName=Not_A_Name",
        "gatewayPods.imagePullSecrets[0].name=UPPER",
        "replicas=0",
        "maxCoresPerNamespace=-1",
        "serviceMonitor.enabled=yes",
        "prometheusRule.enabled=maybe",
        "logLevel=LOUD",
        "watchNamespaces={Not_A_Namespace}",
        "image.pullPolicy=Sometimes",
        "unknownKey=1",
        "prometheusRule.errorRatio=2",
    ],
)
def test_schema_rejects_bad_values(value: str) -> None:
    result = subprocess.run(
        [str(a) for a in helm_template_args(values=[value])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0, f"helm template accepted {value}"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr


def _crds_dir() -> dict[str, dict[str, Any]]:
    docs = (yaml.safe_load(p.read_text("utf-8")) for p in (REPO / "crds").glob("*.yaml"))
    return {doc["metadata"]["name"]: doc for doc in docs}


def test_chart_crds_are_the_crds_dir_kept_on_uninstall() -> None:
    source = _crds_dir()
    rendered = by_kind(manifests(render()), "CustomResourceDefinition")
    assert sorted(d["metadata"]["name"] for d in rendered) == sorted(source)
    for doc in rendered:
        want = source[doc["metadata"]["name"]]
        assert doc["spec"] == want["spec"], f"{doc['metadata']['name']}: run `make crds`"
        labels = doc["metadata"]["labels"]
        assert want["metadata"]["labels"].items() <= labels.items()
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert (
            labels["app.kubernetes.io/version"]
            == yaml.safe_load((CHART / "Chart.yaml").read_text("utf-8"))["appVersion"]
        )
        assert doc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_crd_values_switch_them_off_or_let_uninstall_delete_them() -> None:
    deleted = by_kind(manifests(render(values=["crds.keep=false"])), "CustomResourceDefinition")
    assert sorted(d["metadata"]["name"] for d in deleted) == sorted(_crds_dir())
    assert all("annotations" not in d["metadata"] for d in deleted)
    off = manifests(render(values=["crds.enabled=false"]))
    assert by_kind(off, "CustomResourceDefinition") == []


@pytest.mark.parametrize(("kube", "accepted"), [("1.30.14", False), ("1.31.0", True)])
def test_kube_version_floor(kube: str, accepted: bool) -> None:
    result = subprocess.run(
        [str(a) for a in helm_template_args()] + ["--kube-version", kube],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode == 0) == accepted, result.stderr
    if not accepted:
        assert "incompatible with Kubernetes" in result.stderr, result.stderr


def test_every_template_renders_valid_yaml_objects() -> None:
    text = render(monitoring=True, values=["replicas=2", "watchNamespaces={a}"])
    for doc in manifests(text):
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    yaml.safe_load(run([tool("helm", "helm"), "show", "values", CHART]))


def test_tenant_roles_aggregate_and_grant_no_secrets() -> None:
    docs = manifests(render())
    roles = {d["metadata"]["name"]: d for d in by_kind(docs, "ClusterRole")}
    view, edit = (roles[name] for name in TENANT_ROLES)
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    for label in ("aggregate-to-edit", "aggregate-to-admin"):
        assert edit["metadata"]["labels"][f"rbac.authorization.k8s.io/{label}"] == "true"
    for role in (view, edit):
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["qsys.dev"]
            if any(r.endswith("/status") for r in rule["resources"]):
                assert rule["verbs"] == ["get", "list", "watch"], rule
    assert {"create", "update", "patch", "delete"} <= set(edit["rules"][0]["verbs"])
    plain = manifests(render(values=["tenantRoles.aggregate=false"]))
    for role in by_kind(plain, "ClusterRole"):
        assert not any("aggregate-to" in k for k in role["metadata"]["labels"])
    off = manifests(render(values=["tenantRoles.enabled=false"]))
    assert not {d["metadata"]["name"] for d in by_kind(off, "ClusterRole")} & set(TENANT_ROLES)


def test_core_network_admission_policy_only_when_networks_are_set() -> None:
    def networks(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
        return [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith("-core-networks")]

    assert not networks(manifests(render()), "ValidatingAdmissionPolicy")
    docs = manifests(render(values=["admission.allowedCoreCIDRs={198.18.0.0/15,192.0.2.0/24}"]))
    (policy,) = networks(docs, "ValidatingAdmissionPolicy")
    (binding,) = networks(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert variables["networks"] == "['198.18.0.0/15', '192.0.2.0/24']"
    messages = [v["message"] for v in policy["spec"]["validations"]]
    assert "inside 198.18.0.0/15, 192.0.2.0/24" in messages[0]


def test_gateway_token_review_role_allows_only_creating_token_reviews() -> None:
    for values in ([], ["watchNamespaces={a}"]):
        docs = manifests(render(values=values))
        (role,) = [
            r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"] == TOKEN_REVIEW_ROLE
        ]
        assert role["rules"] == [
            {
                "apiGroups": ["authentication.k8s.io"],
                "resources": ["tokenreviews"],
                "verbs": ["create"],
            }
        ]
        # The chart binds it to nobody: the operator does, per core, while needed.
        bound = [b["roleRef"]["name"] for b in by_kind(docs, "ClusterRoleBinding")]
        assert TOKEN_REVIEW_ROLE not in bound
        assert _env(docs)[ENV["token_review_cluster_role"]] == TOKEN_REVIEW_ROLE


def test_operator_rbac_covers_every_child_kind() -> None:
    """kinds.CHILDREN is the one catalogue: each kind the operator applies, deletes and
    watches needs exactly those verbs in the chart, in both modes."""
    needed = {"get", "list", "watch", "create", "patch", "delete"}
    for values in ([], ["watchNamespaces={a}"]):
        rules = _rules(manifests(render(values=values)))
        for kind in CHILDREN:
            granted = {
                verb
                for rule in rules
                if kind.group in rule["apiGroups"]
                and kind.plural in rule["resources"]
                and "resourceNames" not in rule
                for verb in rule["verbs"]
            }
            assert needed <= granted, (kind.kind, values)
            if not kind.namespaced:
                # Cluster-scoped children: granted by a ClusterRole in both modes.
                cluster = [
                    rule
                    for role in _operator_roles(manifests(render(values=values)), "ClusterRole")
                    for rule in role["rules"]
                    if kind.plural in rule["resources"]
                ]
                assert cluster, (kind.kind, values)
