"""Tenant safety on the real control plane (docs/security.md, "Tenant model").

A tenant ServiceAccount bound to the chart's edit role and the standard `view`
role (a TokenRequest token; neither grants Secrets) creates QSysCores and
AccessPolicies naming Secrets of its namespace. Unmarked Secrets are never
mounted or read, and the refusal is explained in conditions and Events; marked
ones work; nothing the tenant can read (children, status, Events, pods, the
operator's log) holds a Secret value or a usable hash. The chart's roles are
checked with `kubectl auth can-i`, also through the standard roles they
aggregate into, and its optional admission policy refuses Cores outside the
allowed networks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_support import (
    REPO,
    Cluster,
    api_error,
    can_i,
    must,
    pinned_tool,
    token_kubeconfig,
    wait_for,
)
from kubernetes import client, config, utils
from kubernetes.client.exceptions import ApiException
from operator_support import (
    GROUP,
    VERSION,
    Operator,
    condition,
    core_body,
    events,
    get,
    policy_body,
    running_operator,
    wait_condition,
)

from qsys_testkit.kube import apply_crds, secret_text

pytestmark = pytest.mark.e2e

CHART = REPO / "charts" / "qsys-operator"
MARKER = "qsys.dev/secret-type"
DB_PASSWORD = "db-password-Vv83kQ0zLx5Hn2Rm"
QRC_PASSWORD = "qrc-password-Tt61wPa9Bc4Ks7Ye"
GOOD_TOKEN = "good-token-Q7mZ2xR9vL4kW8nT3pY6sD1f"
UNMARKED_TOKEN = "unmarked-token-B5hJ8cN2qX7tR4wM9kL3"
WEAK_TOKEN = "abcabcabcabcabcabcabcabcabcabcabcabc"


def _helm_template(release: str, *values: str) -> list[dict[str, Any]]:
    args = [str(pinned_tool("helm", "helm")), "template", release, str(CHART)]
    for value in values:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture
def tenant_roles(cluster: Cluster) -> Iterator[str]:
    """The chart's tenant ClusterRoles, created from `helm template`; their name prefix."""
    release = f"t{uuid.uuid4().hex[:6]}"
    docs = [
        d
        for d in _helm_template(release)
        if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith(("-view", "-edit"))
    ]
    assert len(docs) == 2
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    for doc in docs:
        utils.create_from_dict(cluster.api, doc)  # type: ignore[no-untyped-call]
    try:
        yield f"{release}-qsys-operator"
    finally:
        for doc in docs:
            rbac.delete_cluster_role(doc["metadata"]["name"])


def _account(cluster: Cluster, ns: str, name: str, roles: list[str], tmp: Path) -> Path:
    client.CoreV1Api(cluster.api).create_namespaced_service_account(
        ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
    )
    for role in roles:
        binding: dict[str, Any] = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{name}-{role}"[:63]},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
        }
        utils.create_from_dict(cluster.api, binding, namespace=ns)  # type: ignore[no-untyped-call]
    return token_kubeconfig(cluster, name, ns, tmp / f"{name}.kubeconfig")


def _secret(
    cluster: Cluster, ns: str, name: str, data: dict[str, str], use: str | None = None
) -> None:
    labels = {MARKER: use} if use else {}
    client.CoreV1Api(cluster.api).create_namespaced_secret(
        ns,
        client.V1Secret(metadata=client.V1ObjectMeta(name=name, labels=labels), string_data=data),
    )


def _volume_secrets(pod_spec: Any) -> set[str]:
    names: set[str] = set()
    for vol in pod_spec.volumes or []:
        if vol.secret is not None:
            names.add(vol.secret.secret_name)
        if vol.projected is not None:
            names |= {s.secret.name for s in vol.projected.sources if s.secret is not None}
    return names


def _deployment_secrets(cluster: Cluster, ns: str) -> set[str] | None:
    try:
        dep = client.AppsV1Api(cluster.api).read_namespaced_deployment("hall-gateway", ns)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return _volume_secrets(must(dep.spec).template.spec)


def _everything_the_tenant_reads(api: client.ApiClient, ns: str) -> str:
    """JSON of every object of the namespace the tenant may list (Secrets are refused)."""
    v1, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    net = client.NetworkingV1Api(api)
    parts: list[Any] = [
        custom.list_namespaced_custom_object(GROUP, VERSION, ns, "qsyscores"),
        custom.list_namespaced_custom_object(GROUP, VERSION, ns, "accesspolicies"),
    ]
    for call in (
        v1.list_namespaced_event,
        v1.list_namespaced_pod,
        v1.list_namespaced_service,
        v1.list_namespaced_config_map,
        apps.list_namespaced_deployment,
        apps.list_namespaced_replica_set,
        net.list_namespaced_network_policy,
    ):
        parts.append(api.sanitize_for_serialization(call(ns)))  # type: ignore[no-untyped-call]
    return json.dumps(parts)


def test_tenant_cannot_borrow_secrets(
    cluster: Cluster, namespace: str, tenant_roles: str, tmp_path: Path
) -> None:
    ns = namespace
    apply_crds(cluster.api, REPO / "crds")
    tenant_cfg = _account(cluster, ns, "tenant", [f"{tenant_roles}-edit", "view"], tmp_path)
    tenant = config.new_client_from_config(config_file=str(tenant_cfg))  # type: ignore[no-untyped-call]
    as_tenant = client.CustomObjectsApi(tenant)

    def tenant_policy(body: dict[str, Any]) -> None:
        as_tenant.create_namespaced_custom_object(GROUP, VERSION, ns, "accesspolicies", body)

    # The tenant may manage the resources but not read, list or create Secrets.
    assert can_i(tenant_cfg, "create", "qsyscores.qsys.dev", "-n", ns)
    assert can_i(tenant_cfg, "delete", "accesspolicies.qsys.dev", "-n", ns)
    for denied in (
        ("get", "secrets"),
        ("list", "secrets"),
        ("create", "secrets"),
        ("patch", "qsyscores.qsys.dev", "--subresource=status"),
        ("patch", "accesspolicies.qsys.dev", "--subresource=status"),
        ("create", "pods"),
        ("create", "deployments.apps"),
    ):
        assert not can_i(tenant_cfg, *denied, "-n", ns), denied
    assert api_error(client.CoreV1Api(tenant).read_namespaced_secret, "x", ns).status == 403

    _secret(cluster, ns, "db", {"username": "dbadmin", "password": DB_PASSWORD})
    _secret(cluster, ns, "qrc", {"username": "av", "password": QRC_PASSWORD}, "core-credentials")
    _secret(cluster, ns, "good", {"token": GOOD_TOKEN}, "client-token")
    _secret(cluster, ns, "weak", {"token": WEAK_TOKEN}, "client-token")
    _secret(cluster, ns, "plain", {"token": UNMARKED_TOKEN})

    # Admission (CEL in the CRD): a core may not name its own generated Secrets.
    own = core_body("hall", 1710)
    own["spec"]["core"] = {
        "host": "192.0.2.10",
        "credentialsSecretRef": {"name": "hall-gateway-config"},
    }
    refused = api_error(
        as_tenant.create_namespaced_custom_object, GROUP, VERSION, ns, "qsyscores", own
    )
    assert refused.status == 422
    assert "must not name the operator's own Secrets" in str(refused.body)

    log = tmp_path / "operator.log"
    with running_operator(cluster, ns, log) as operator:
        core = core_body("hall", 1710)
        core["spec"]["core"] = {"host": "192.0.2.10", "credentialsSecretRef": {"name": "db"}}
        as_tenant.create_namespaced_custom_object(GROUP, VERSION, ns, "qsyscores", core)

        # Unmarked credentials: a condition and an Event say why; nothing mounts them.
        hall = wait_condition(cluster, ns, "QSysCore", "hall", "SecretsAccepted", "False")
        cond = condition(hall, "SecretsAccepted")
        assert cond["reason"] == "SecretNotAccepted"
        assert "Secret db" in cond["message"]
        assert "qsys.dev/secret-type=core-credentials" in cond["message"]
        assert condition(hall, "Ready")["reason"] == "SecretNotAccepted"
        wait_for(
            "SecretNotAccepted Event",
            lambda: any(
                e.startswith("SecretNotAccepted") and "Secret db" in e
                for e in events(cluster, ns, "hall")
            ),
            timeout=30,
        )
        mounted = wait_for("gateway Deployment", lambda: _deployment_secrets(cluster, ns))
        assert mounted == {"hall-gateway-config", "hall-gateway-token-key"}
        pods = client.CoreV1Api(cluster.api).list_namespaced_pod(ns).items
        assert all("db" not in _volume_secrets(p.spec) for p in pods)

        # Marked credentials, to the hosts it allows: mounted.
        client.CoreV1Api(cluster.api).patch_namespaced_secret(
            "qrc", ns, {"metadata": {"annotations": {"qsys.dev/core-hosts": "192.0.2.10"}}}
        )
        as_tenant.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            ns,
            "qsyscores",
            "hall",
            {"spec": {"core": {"credentialsSecretRef": {"name": "qrc"}}}},
        )
        wait_condition(cluster, ns, "QSysCore", "hall", "SecretsAccepted", "True")
        wait_for("credentials mounted", lambda: "qrc" in (_deployment_secrets(cluster, ns) or ()))
        # ... but not to a host of the tenant's choosing.
        as_tenant.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "qsyscores", "hall", {"spec": {"core": {"host": "198.51.100.7"}}}
        )
        moved = wait_condition(cluster, ns, "QSysCore", "hall", "SecretsAccepted", "False")
        assert "198.51.100.7 is not one of them" in condition(moved, "SecretsAccepted")["message"]
        wait_for(
            "credentials unmounted",
            lambda: "qrc" not in (_deployment_secrets(cluster, ns) or {"qrc"}),
        )

        # Tokens: generated, marked BYO, and refused ones (unmarked, weak, another's).
        tenant_policy(
            policy_body(
                "p",
                "hall",
                [
                    {"name": "gen"},
                    {"name": "good", "tokenSecretRef": {"name": "good"}},
                    {"name": "plain", "tokenSecretRef": {"name": "plain"}},
                    {"name": "weak", "tokenSecretRef": {"name": "weak"}},
                ],
            ),
        )
        generated = wait_for("token", lambda: secret_text(cluster.api, ns, "p-gen-token", "token"))
        tenant_policy(
            policy_body(
                "q", "hall", [{"name": "borrow", "tokenSecretRef": {"name": "p-gen-token"}}]
            )
        )

        def problems(name: str, *needles: str) -> dict[str, Any] | None:
            ready = condition(get(cluster, ns, "AccessPolicy", name), "Ready")
            ok = ready.get("reason") == "TokenProblem" and all(
                n in ready["message"] for n in needles
            )
            return ready if ok else None

        ready = wait_for(
            "p TokenProblem",
            lambda: problems("p", "subject plain", "subject weak"),
            timeout=30,
        )
        assert "Secret plain" in ready["message"]
        assert "qsys.dev/secret-type=client-token" in ready["message"]
        assert "too predictable" in ready["message"]
        assert "subject good" not in ready["message"]
        assert "subject gen" not in ready["message"]
        borrowed = wait_for("q TokenProblem", lambda: problems("q", "generated by the operator"))
        assert "p-gen-token" in borrowed["message"]

        def rendered() -> dict[str, Any] | None:
            text = secret_text(cluster.api, ns, "hall-gateway-config", "gateway.yaml")
            cfg = yaml.safe_load(text) if text else None
            names = [s["name"] for s in (cfg or {}).get("subjects", [])]
            return cfg if names == ["gen", "good"] else None

        cfg = wait_for("config with the accepted subjects", rendered, timeout=30)
        key = must(secret_text(cluster.api, ns, "hall-gateway-token-key", "key")).encode()
        hashes = {s["name"]: s["tokenHmacSha256"] for s in cfg["subjects"]}
        assert all(s.get("tokenSha256") is None for s in cfg["subjects"])
        assert hashes["good"] == hmac.new(key, GOOD_TOKEN.encode(), hashlib.sha256).hexdigest()
        assert cfg["auth"]["tokenKeyFile"] == "/etc/qsys-gateway/token-key"

        # Nothing the tenant can read holds a Secret value or a hash usable offline.
        values = [DB_PASSWORD, QRC_PASSWORD, GOOD_TOKEN, UNMARKED_TOKEN, WEAK_TOKEN, generated]
        leaks = values + [hashlib.sha256(v.encode()).hexdigest() for v in values]
        leaks += [*hashes.values(), key.decode()]
        seen = _everything_the_tenant_reads(tenant, ns) + operator.output()
        seen_b64 = [base64.b64encode(v.encode()).decode() for v in values]
        assert not [v for v in leaks + seen_b64 if v in seen]
        assert isinstance(operator, Operator)
    tenant.close()


def test_aggregated_roles(
    cluster: Cluster, namespace: str, tenant_roles: str, tmp_path: Path
) -> None:
    ns = namespace
    viewer = _account(cluster, ns, "viewer", ["view"], tmp_path)
    editor = _account(cluster, ns, "editor", ["edit"], tmp_path)
    admin = _account(cluster, ns, "admin", ["admin"], tmp_path)
    plain = _account(cluster, ns, "own-view", [f"{tenant_roles}-view"], tmp_path)
    # The cluster-role aggregation controller fills in view/edit/admin asynchronously.
    wait_for("view aggregated", lambda: can_i(viewer, "list", "qsyscores.qsys.dev", "-n", ns))
    wait_for(
        "edit aggregated", lambda: can_i(editor, "create", "accesspolicies.qsys.dev", "-n", ns)
    )
    wait_for("admin aggregated", lambda: can_i(admin, "delete", "qsyscores.qsys.dev", "-n", ns))
    assert can_i(viewer, "get", "accesspolicies.qsys.dev", "-n", ns)
    assert not can_i(viewer, "create", "qsyscores.qsys.dev", "-n", ns)
    assert not can_i(viewer, "get", "secrets", "-n", ns)
    assert can_i(plain, "watch", "qsyscores.qsys.dev", "-n", ns)
    assert not can_i(plain, "update", "qsyscores.qsys.dev", "-n", ns)
    assert not can_i(editor, "patch", "qsyscores.qsys.dev", "--subresource=status", "-n", ns)


def test_admission_policy_keeps_cores_inside_the_allowed_networks(
    cluster: Cluster, namespace: str
) -> None:
    ns = namespace
    apply_crds(cluster.api, REPO / "crds")
    release = f"a{uuid.uuid4().hex[:6]}"
    docs = _helm_template(release, "admission.allowedCoreCIDRs={192.0.2.0/24}")
    (policy,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    (binding,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"]
    # Only this test's namespace: other tests on the cluster keep their Cores.
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}
    }
    adm = client.AdmissionregistrationV1Api(cluster.api)
    custom = client.CustomObjectsApi(cluster.api)
    for doc in (policy, binding):
        utils.create_from_dict(cluster.api, doc)  # type: ignore[no-untyped-call]
    try:

        def create(name: str, **core: Any) -> ApiException | None:
            body = core_body(name, 1710)
            body["spec"]["core"] = {"host": "192.0.2.10"} | core.pop("core", {})
            body["spec"] |= core
            try:
                custom.create_namespaced_custom_object(GROUP, VERSION, ns, "qsyscores", body)
            except ApiException as exc:
                return exc
            custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "qsyscores", name)
            return None

        # The policy is enforced once the API server has loaded it.
        wait_for("policy active", lambda: create("probe", core={"host": "198.51.100.7"}))
        assert create("inside") is None
        outside = create("outside", core={"host": "198.51.100.7"})
        assert outside is not None
        assert "must be IP addresses inside 192.0.2.0/24" in str(outside.body)
        named = create(
            "named", core={"host": "core.example"}, networkPolicy={"coreCIDRs": ["192.0.2.0/28"]}
        )
        assert named is not None
        wide = create("wide", networkPolicy={"coreCIDRs": ["0.0.0.0/0"]})
        assert wide is not None
        assert "coreCIDRs must lie inside" in str(wide.body)
        off = create("off", networkPolicy={"enabled": False})
        assert off is not None
        assert "may not be turned off" in str(off.body)
    finally:
        adm.delete_validating_admission_policy_binding(binding["metadata"]["name"])
        adm.delete_validating_admission_policy(policy["metadata"]["name"])


def test_fixed_name_secrets_are_not_taken_over(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """A tenant cannot name resources so that the operator adopts an existing Secret as a
    core's token key or a subject's generated token."""
    ns = namespace
    apply_crds(cluster.api, REPO / "crds")
    _secret(cluster, ns, "lobby-gateway-token-key", {"key": "k" * 40})
    _secret(cluster, ns, "ops-admin-token", {"token": DB_PASSWORD})
    with running_operator(cluster, ns, tmp_path / "operator.log") as operator:
        custom = client.CustomObjectsApi(cluster.api)
        core = core_body("lobby", 1710)
        core["spec"]["core"] = {"host": "192.0.2.10"}
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "qsyscores", core)
        policy = policy_body("ops", "lobby", [{"name": "admin"}, {"name": "panel"}])
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "accesspolicies", policy)

        lobby = wait_condition(cluster, ns, "QSysCore", "lobby", "SecretsAccepted", "False")
        message = condition(lobby, "SecretsAccepted")["message"]
        assert "lobby-gateway-token-key exists but was not generated for QSysCore lobby" in message
        ops = wait_condition(cluster, ns, "AccessPolicy", "ops", "Ready", "False")
        assert condition(ops, "Ready")["reason"] == "NotRendered"
        apps = client.AppsV1Api(cluster.api)
        assert api_error(apps.read_namespaced_deployment, "lobby-gateway", ns).status == 404

        # Without the foreign Secret the operator makes its own key; the foreign token
        # Secret is still refused for subject admin, and its value goes nowhere.
        client.CoreV1Api(cluster.api).delete_namespaced_secret("lobby-gateway-token-key", ns)
        wait_condition(cluster, ns, "QSysCore", "lobby", "SecretsAccepted", "True")

        def admin_refused() -> dict[str, Any] | None:
            ready = condition(get(cluster, ns, "AccessPolicy", "ops"), "Ready")
            text = ready.get("message", "")
            return ready if "subject admin" in text and "not generated for" in text else None

        wait_for("ops-admin-token refused", admin_refused, timeout=30)

        def panel_only() -> str | None:
            text = secret_text(cluster.api, ns, "lobby-gateway-config", "gateway.yaml")
            return text if text and "name: panel" in text else None

        text = wait_for("config with panel only", panel_only)
        assert "name: admin" not in text
        assert DB_PASSWORD not in text + operator.output()
        assert secret_text(cluster.api, ns, "ops-admin-token", "token") == DB_PASSWORD  # untouched


# ---- the operator touches only its own children --------------------------------------

PLATFORM_SELECTOR = {"app": "platform-api"}


def _platform_objects(
    cluster: Cluster, ns: str, core: str, service_and_secret: bool = True
) -> list[tuple[str, str]]:
    """The platform's own objects, named like the children of QSysCore `core`, created
    as the cluster admin: a ServiceAccount bound to `edit` (what a tenant's custom image
    would love to run as), a PodDisruptionBudget, a NetworkPolicy, and optionally a
    Service and a Secret."""
    name = f"{core}-gateway"
    v1 = client.CoreV1Api(cluster.api)
    labels = {"team": "platform"}
    v1.create_namespaced_service_account(
        ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )
    utils.create_from_dict(  # type: ignore[no-untyped-call]
        cluster.api,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{name}-edit"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "edit",
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
        },
        namespace=ns,
    )
    client.PolicyV1Api(cluster.api).create_namespaced_pod_disruption_budget(
        ns,
        client.V1PodDisruptionBudget(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            spec=client.V1PodDisruptionBudgetSpec(
                min_available=1,
                selector=client.V1LabelSelector(match_labels=PLATFORM_SELECTOR),
            ),
        ),
    )
    client.NetworkingV1Api(cluster.api).create_namespaced_network_policy(
        ns,
        client.V1NetworkPolicy(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            spec=client.V1NetworkPolicySpec(
                pod_selector=client.V1LabelSelector(match_labels=PLATFORM_SELECTOR),
                policy_types=["Ingress"],
            ),
        ),
    )
    made = [("ServiceAccount", name), ("PodDisruptionBudget", name), ("NetworkPolicy", name)]
    if not service_and_secret:
        return made
    v1.create_namespaced_service(
        ns,
        client.V1Service(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            spec=client.V1ServiceSpec(
                selector=PLATFORM_SELECTOR,
                ports=[client.V1ServicePort(name="https", port=443, target_port=8443)],
            ),
        ),
    )
    _secret(cluster, ns, f"{name}-config", {"gateway.yaml": "listen: {}\n"})
    return [*made, ("Service", name), ("Secret", f"{name}-config")]


def _read(cluster: Cluster, ns: str, kind: str, name: str) -> dict[str, Any] | None:
    """The whole object as the API server stores it (resourceVersion, managedFields and
    ownerReferences included); None when it does not exist."""
    v1 = client.CoreV1Api(cluster.api)
    calls: dict[str, Any] = {
        "ServiceAccount": v1.read_namespaced_service_account,
        "Service": v1.read_namespaced_service,
        "Secret": v1.read_namespaced_secret,
        "PodDisruptionBudget": client.PolicyV1Api(
            cluster.api
        ).read_namespaced_pod_disruption_budget,
        "NetworkPolicy": client.NetworkingV1Api(cluster.api).read_namespaced_network_policy,
        "Deployment": client.AppsV1Api(cluster.api).read_namespaced_deployment,
    }
    try:
        obj = calls[kind](name, ns)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    out: dict[str, Any] = cluster.api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return out


def _snapshot(cluster: Cluster, ns: str, objects: list[tuple[str, str]]) -> dict[str, Any]:
    return {f"{kind} {name}": _read(cluster, ns, kind, name) for kind, name in objects}


def _pdb_settled(cluster: Cluster, ns: str, name: str) -> bool:
    """The disruption controller writes a new PDB's status once; after that it changes only
    when pods it selects change (none do here)."""
    obj = _read(cluster, ns, "PodDisruptionBudget", name) or {}
    return (obj.get("status") or {}).get("observedGeneration") == 1


def _runs_as(cluster: Cluster, ns: str, account: str) -> list[str]:
    """Pods of the namespace running as `account`, and ClusterRoleBindings naming it."""
    pods = client.CoreV1Api(cluster.api).list_namespaced_pod(ns).items
    found = [
        f"pod {must(p.metadata).name}" for p in pods if must(p.spec).service_account_name == account
    ]
    for crb in client.RbacAuthorizationV1Api(cluster.api).list_cluster_role_binding().items:
        for sub in crb.subjects or []:
            if (sub.kind, sub.name, sub.namespace) == ("ServiceAccount", account, ns):
                found.append(f"clusterrolebinding {must(crb.metadata).name}")
    return found


def test_platform_objects_named_like_children_stay_byte_identical(
    cluster: Cluster, namespace: str, tenant_roles: str, tmp_path: Path
) -> None:
    """A tenant names QSysCores after the platform's `<name>-gateway` objects. The operator
    neither applies to, patches, owns nor deletes them, through the cores' creation,
    their changes and their deletion (garbage collection included): each stays
    byte-identical (resourceVersion and whole object). A core that needs such a name
    says NameConflict and gets nothing; no pod ever runs as the platform's
    ServiceAccount, and it is never bound to the TokenReview role."""
    ns = namespace
    apply_crds(cluster.api, REPO / "crds")
    tenant_cfg = _account(cluster, ns, "tenant", [f"{tenant_roles}-edit", "view"], tmp_path)
    tenant = config.new_client_from_config(config_file=str(tenant_cfg))  # type: ignore[no-untyped-call]
    as_tenant = client.CustomObjectsApi(tenant)
    # `ops` wants every one of these names; `lobby` wants none of them (replicas 1: no
    # PDB; NetworkPolicy off; no ServiceAccount subject), which used to delete them.
    platform = _platform_objects(cluster, ns, "ops") + _platform_objects(
        cluster, ns, "lobby", service_and_secret=False
    )
    wait_for(
        "PDB status settled",
        lambda: all(_pdb_settled(cluster, ns, n) for n in ("ops-gateway", "lobby-gateway")),
    )
    before = _snapshot(cluster, ns, platform)
    assert all(before.values())

    def unchanged() -> None:
        after = _snapshot(cluster, ns, platform)
        changed = [k for k in before if after[k] != before[k]]
        assert not changed, f"changed by the operator: {changed}"

    with running_operator(cluster, ns, tmp_path / "operator.log") as operator:
        ops = core_body("ops", 1710, replicas=2)
        ops["spec"]["core"] = {"host": "192.0.2.10"}
        as_tenant.create_namespaced_custom_object(GROUP, VERSION, ns, "qsyscores", ops)
        as_tenant.create_namespaced_custom_object(
            GROUP,
            VERSION,
            ns,
            "accesspolicies",
            policy_body("robots", "ops", [{"name": "ci", "serviceAccount": {"name": "tenant"}}]),
        )
        lobby = core_body("lobby", 1710, replicas=1, networkPolicy={"enabled": False})
        lobby["spec"]["core"] = {"host": "192.0.2.10"}
        as_tenant.create_namespaced_custom_object(GROUP, VERSION, ns, "qsyscores", lobby)

        def conflict() -> dict[str, Any] | None:
            ready = condition(get(cluster, ns, "QSysCore", "ops"), "Ready")
            text = ready.get("message", "")
            wanted = [
                "ServiceAccount ops-gateway",
                "Service ops-gateway",
                "Secret ops-gateway-config",
                "PodDisruptionBudget ops-gateway",
                "NetworkPolicy ops-gateway",
            ]
            ok = ready.get("reason") == "NameConflict" and all(w in text for w in wanted)
            return ready if ok else None

        ready = wait_for("ops NameConflict", conflict, timeout=60)
        assert ready["status"] == "False"
        assert "team" not in ready["message"]  # nothing of the objects beyond their names
        wait_for(
            "NameConflict Event",
            lambda: any(e.startswith("NameConflict") for e in events(cluster, ns, "ops")),
            timeout=30,
        )
        robots = wait_condition(cluster, ns, "AccessPolicy", "robots", "Ready", "False")
        assert condition(robots, "Ready")["reason"] == "NotRendered"
        # lobby renders: its Deployment is there, and it did not delete the others.
        wait_for("lobby's gateway", lambda: _read(cluster, ns, "Deployment", "lobby-gateway"))
        assert _read(cluster, ns, "Deployment", "ops-gateway") is None
        binding = f"qsys-gateway-tokenreview:{ns}:ops"
        rbac = client.RbacAuthorizationV1Api(cluster.api)
        assert api_error(rbac.read_cluster_role_binding, binding).status == 404
        time.sleep(4)  # several resyncs (1 s) and reconciles
        unchanged()
        assert _runs_as(cluster, ns, "ops-gateway") == []

        # The tenant changes and then deletes both cores: still nothing touched, and the
        # garbage collector, which follows ownerReferences, has nothing of the platform's
        # to collect.
        as_tenant.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "qsyscores", "lobby", {"spec": {"gateway": {"replicas": 2}}}
        )

        def lobby_conflict() -> dict[str, Any] | None:
            ready = condition(get(cluster, ns, "QSysCore", "lobby"), "Ready")
            return ready if ready.get("reason") == "NameConflict" else None

        message = wait_for("lobby NameConflict", lobby_conflict, timeout=60)["message"]
        assert message.startswith("PodDisruptionBudget lobby-gateway already exists")
        for name in ("ops", "lobby"):
            as_tenant.delete_namespaced_custom_object(GROUP, VERSION, ns, "qsyscores", name)
        wait_for(
            "lobby's gateway collected",
            lambda: _read(cluster, ns, "Deployment", "lobby-gateway") is None or None,
        )
        wait_for(
            "lobby's config collected",
            lambda: _read(cluster, ns, "Secret", "lobby-gateway-config") is None or None,
        )
        time.sleep(3)
        unchanged()
        assert _runs_as(cluster, ns, "ops-gateway") == []
        assert _runs_as(cluster, ns, "lobby-gateway") == []
        assert "Traceback" not in operator.output()
    tenant.close()
