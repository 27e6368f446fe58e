"""ServiceAccount subjects: the API model and its CEL twin, the gateway config
(`serviceAccount` user names, `tokenReview.audience`), and the gateway's own identity
(ServiceAccount, TokenReview ClusterRoleBinding, token mount, API server egress), which
exists only while some bound subject is a ServiceAccount."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from test_render import make_policy as base_policy

from qsys_operator.api import AccessPolicy, QSysCore
from qsys_operator.api.accesspolicy import SUBJECT_SERVICE_ACCOUNT_RULE
from qsys_operator.crdgen import openapi_schema
from qsys_operator.handlers.children import owner_of
from qsys_operator.k8s import endpoint_addresses, object_path
from qsys_operator.kinds import CLUSTER_ROLE_BINDING, SERVICE_ACCOUNT
from qsys_operator.render import ChildRef, PolicyBinding, RenderResult, render_core_children
from qsys_operator.render.identity import token_review_binding_name
from qsys_operator.settings import OperatorSettings
from qsys_operator.tokens import PolicyTokens, resolve_tokens
from qsys_protocol.config import parse_config

SETTINGS = OperatorSettings(token_review_cluster_role="qsys-qsys-operator-gateway-tokenreview")
API_SERVER = [("198.18.0.1", 6443)]
CORE_LABELS = {
    "app.kubernetes.io/name": "qsys-gateway",
    "app.kubernetes.io/instance": "hall",
    "app.kubernetes.io/managed-by": "qsys-operator",
}
BINDING = "qsys-gateway-tokenreview:av:hall"


def make_core(**gateway: Any) -> QSysCore:
    return QSysCore.model_validate(
        {
            "metadata": {"name": "hall", "namespace": "av", "uid": "core-uid"},
            "spec": {"core": {"host": "192.0.2.10"}, "gateway": gateway},
        }
    )


def make_policy(
    *subjects: dict[str, Any], name: str = "jobs", created: str = "2024-01-01T00:00:00Z"
) -> AccessPolicy:
    return base_policy(
        name,
        list(subjects),
        created,
        rules=[{"methods": ["Component.Get"], "components": ["Room*"]}],
    )


def hashes(policy: AccessPolicy) -> dict[str, str]:
    return {
        s.name: hashlib.sha256(s.name.encode()).hexdigest()
        for s in policy.spec.subjects
        if s.uses_token
    }


def render(
    *policies: AccessPolicy, core: QSysCore | None = None, api_server: Any = API_SERVER
) -> RenderResult:
    bindings = [PolicyBinding(p, hashes(p)) for p in policies]
    return render_core_children(core or make_core(), bindings, SETTINGS, api_server)


def kinds(result: RenderResult) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in result.objects}


def config_of(result: RenderResult) -> dict[str, Any]:
    data = kinds(result)["Secret"]["data"]["gateway.yaml"]
    parsed: dict[str, Any] = yaml.safe_load(base64.b64decode(data))
    return parsed


def pod_spec(result: RenderResult) -> dict[str, Any]:
    spec: dict[str, Any] = kinds(result)["Deployment"]["spec"]["template"]["spec"]
    return spec


SCHEDULER = {"name": "scheduler", "serviceAccount": {"name": "room-scheduler"}}
PANEL = {"name": "panel"}


# ---- the API ----------------------------------------------------------------------------


def test_subject_takes_a_service_account_in_the_policy_namespace_by_default() -> None:
    policy = make_policy(
        SCHEDULER, {"name": "x", "serviceAccount": {"name": "a", "namespace": "b"}}
    )
    first, second = policy.spec.subjects
    assert first.serviceAccount is not None
    assert second.serviceAccount is not None
    assert first.serviceAccount.username("av") == "system:serviceaccount:av:room-scheduler"
    assert second.serviceAccount.username("av") == "system:serviceaccount:b:a"
    assert not first.uses_token


@pytest.mark.parametrize(
    "extra",
    [{"tokenSecretRef": {"name": "t"}}, {"sourceCIDRs": ["192.0.2.7/32"]}],
    ids=["tokenSecretRef", "sourceCIDRs"],
)
def test_service_account_excludes_other_credentials(extra: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="set no tokenSecretRef or sourceCIDRs"):
        make_policy({**SCHEDULER, **extra})


@pytest.mark.parametrize(
    "account",
    [
        {},
        {"name": ""},
        {"name": "Bad_Name"},
        {"name": "a", "namespace": "a.b"},
        {"name": "a", "x": 1},
    ],
)
def test_service_account_reference_is_validated(account: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        make_policy({"name": "s", "serviceAccount": account})


def test_crd_carries_the_exclusivity_rule_and_documents_the_fields() -> None:
    schema = openapi_schema(AccessPolicy)
    subject = schema["properties"]["spec"]["properties"]["subjects"]["items"]
    assert SUBJECT_SERVICE_ACCOUNT_RULE in subject["x-kubernetes-validations"]
    account = subject["properties"]["serviceAccount"]
    assert "TokenReview" in account["description"]
    assert account["required"] == ["name"]
    for field in account["properties"].values():
        assert field["description"]
    status = schema["properties"]["status"]["properties"]
    assert "system:serviceaccount" in status["serviceAccounts"]["description"]
    core = openapi_schema(QSysCore)["properties"]
    audience = core["spec"]["properties"]["gateway"]["properties"]["serviceAccountAudience"]
    assert "<name>-gateway.<namespace>.svc" in audience["description"]
    assert "serviceAccountAudience" in core["status"]["properties"]["gateway"]["properties"]


def test_audience_default_and_override() -> None:
    assert make_core().service_account_audience == "hall-gateway.av.svc"
    assert make_core(serviceAccountAudience="qsys").service_account_audience == "qsys"
    for bad in ("", "with space", "x" * 254):
        with pytest.raises(ValidationError):
            make_core(serviceAccountAudience=bad)


# ---- without serviceAccount subjects: nothing ------------------------------------------------


def test_no_service_account_subject_means_no_identity_at_all() -> None:
    result = render(make_policy(PANEL, {"name": "dsp", "sourceCIDRs": ["192.0.2.7/32"]}))
    assert not result.identity
    assert {"ServiceAccount", "ClusterRoleBinding"}.isdisjoint(kinds(result))
    assert ChildRef(SERVICE_ACCOUNT, "hall-gateway") in result.absent
    assert ChildRef(CLUSTER_ROLE_BINDING, BINDING) in result.absent
    spec = pod_spec(result)
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec
    assert "tokenReview" not in config_of(result)
    # The API server is not reachable, even when the caller knows its endpoints.
    egress = kinds(result)["NetworkPolicy"]["spec"]["egress"]
    assert not [r for r in egress if {"protocol": "TCP", "port": 6443} in r.get("ports", [])]


# ---- with them --------------------------------------------------------------------------------


def test_service_account_subject_is_rendered_with_its_user_name_and_the_audience() -> None:
    other_ns = {"name": "ops", "serviceAccount": {"name": "runner", "namespace": "ci"}}
    result = render(make_policy(SCHEDULER, other_ns, PANEL))
    config = config_of(result)
    subjects = {s["name"]: s for s in config["subjects"]}
    assert subjects["scheduler"]["serviceAccount"] == "system:serviceaccount:av:room-scheduler"
    assert subjects["scheduler"]["rules"] == subjects["panel"]["rules"]
    assert subjects["scheduler"]["rules"][0]["components"] == ["Room*"]
    assert subjects["ops"]["serviceAccount"] == "system:serviceaccount:ci:runner"
    for name in ("scheduler", "ops"):
        for key in ("tokenHmacSha256", "tokenSha256", "previousTokenHmacSha256", "sourceCIDRs"):
            assert subjects[name].get(key) is None, (name, key)
    assert subjects["panel"]["tokenHmacSha256"]
    assert config["tokenReview"]["audience"] == "hall-gateway.av.svc"
    assert result.subjects == 3
    # The gateway's own model accepts what the operator wrote.
    parsed = parsed_config(result)
    assert parsed.tokenReview is not None
    assert parsed.tokenReview.audience == "hall-gateway.av.svc"


def parsed_config(result: RenderResult) -> Any:
    return parse_config(config_of(result))


def test_custom_audience_reaches_the_config() -> None:
    result = render(make_policy(SCHEDULER), core=make_core(serviceAccountAudience="qsys.example"))
    assert config_of(result)["tokenReview"]["audience"] == "qsys.example"


def test_service_account_and_binding_come_first_and_are_shaped_exactly() -> None:
    result = render(make_policy(SCHEDULER))
    assert result.identity
    assert [o["kind"] for o in result.objects[:3]] == [
        "ServiceAccount",
        "ClusterRoleBinding",
        "Secret",
    ]
    assert not {r.kind for r in result.absent} & {SERVICE_ACCOUNT, CLUSTER_ROLE_BINDING}
    account = kinds(result)["ServiceAccount"]
    assert account == {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": "hall-gateway",
            "namespace": "av",
            "labels": CORE_LABELS,
            "ownerReferences": [
                {
                    "apiVersion": "qsys.dev/v1alpha1",
                    "kind": "QSysCore",
                    "name": "hall",
                    "uid": "core-uid",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "automountServiceAccountToken": False,
    }
    binding = kinds(result)["ClusterRoleBinding"]
    assert binding == {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": BINDING,
            "labels": {**CORE_LABELS, "qsys.dev/core-namespace": "av"},
            "annotations": {"qsys.dev/owner": "av/hall"},
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "qsys-qsys-operator-gateway-tokenreview",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "hall-gateway", "namespace": "av"}],
    }


def test_gateway_pods_run_as_the_service_account_with_its_token() -> None:
    spec = pod_spec(render(make_policy(SCHEDULER)))
    assert spec["serviceAccountName"] == "hall-gateway"
    assert spec["serviceAccount"] == "hall-gateway"  # owned too, so that removing works
    assert spec["automountServiceAccountToken"] is True
    # Nothing else of the pod changes.
    plain = pod_spec(render(make_policy(PANEL)))
    assert "serviceAccount" not in plain
    rest = {k: v for k, v in spec.items() if k not in ("serviceAccountName", "serviceAccount")}
    assert rest == {**plain, "automountServiceAccountToken": True}


def test_network_policy_lets_the_gateway_reach_the_api_server_endpoints_only() -> None:
    endpoints = [("198.18.0.1", 6443), ("198.18.0.2", 6443)]
    with_sa = kinds(render(make_policy(SCHEDULER), api_server=endpoints))["NetworkPolicy"]
    without = kinds(render(make_policy(PANEL), api_server=endpoints))["NetworkPolicy"]
    extra = [r for r in with_sa["spec"]["egress"] if r not in without["spec"]["egress"]]
    assert extra == [
        {
            "to": [
                {"ipBlock": {"cidr": "198.18.0.1/32"}},
                {"ipBlock": {"cidr": "198.18.0.2/32"}},
            ],
            "ports": [{"protocol": "TCP", "port": 6443}],
        }
    ]
    assert with_sa["spec"]["ingress"] == without["spec"]["ingress"]
    v6 = kinds(render(make_policy(SCHEDULER), api_server=[("fd00::1", 443)]))["NetworkPolicy"]
    assert v6["spec"]["egress"][-1]["to"] == [{"ipBlock": {"cidr": "fd00::1/128"}}]
    unknown = kinds(render(make_policy(SCHEDULER), api_server=[]))["NetworkPolicy"]
    assert unknown["spec"]["egress"] == without["spec"]["egress"]


def test_removing_the_last_service_account_subject_removes_the_identity() -> None:
    policy = make_policy(SCHEDULER, PANEL)
    before = render(policy)
    body = policy.model_dump(mode="json", exclude_none=True)
    body["spec"]["subjects"] = [PANEL]
    after = render(AccessPolicy.model_validate(body))
    assert before.identity
    assert not after.identity
    assert "ServiceAccount" in kinds(before)
    assert "ServiceAccount" not in kinds(after)
    assert ChildRef(CLUSTER_ROLE_BINDING, BINDING) in after.absent
    assert "tokenReview" not in config_of(after)


def test_one_service_account_one_subject_the_oldest_policy_keeps_it() -> None:
    older = make_policy(SCHEDULER, name="older", created="2024-01-01T00:00:00Z")
    twin = {"name": "again", "serviceAccount": {"name": "room-scheduler", "namespace": "av"}}
    newer = make_policy(twin, name="newer", created="2024-02-01T00:00:00Z")
    result = render(newer, older)
    assert [s["name"] for s in config_of(result)["subjects"]] == ["scheduler"]
    (conflict,) = result.conflicts
    assert (conflict.subject, conflict.policy, conflict.kept_by, conflict.reason) == (
        "again",
        "newer",
        "older",
        "duplicate-service-account",
    )


def test_rendering_is_deterministic() -> None:
    policy = make_policy(SCHEDULER, PANEL)
    first, second = render(policy), render(copy.deepcopy(policy))
    assert first.objects == second.objects


def test_binding_name_is_per_namespace_and_core_and_bounded() -> None:
    assert token_review_binding_name("av", "hall") == BINDING
    assert token_review_binding_name("a", "v-hall") != token_review_binding_name("a-v", "hall")
    long = token_review_binding_name("n" * 63, "c" * 253)
    assert len(long) == 253
    assert long == token_review_binding_name("n" * 63, "c" * 253)
    assert long != token_review_binding_name("n" * 63, "c" * 252 + "d")


def test_cluster_scoped_paths_have_no_namespace() -> None:
    assert object_path(CLUSTER_ROLE_BINDING, "av", BINDING) == (
        f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{BINDING}"
    )
    assert object_path(SERVICE_ACCOUNT, "av", "hall-gateway") == (
        "/api/v1/namespaces/av/serviceaccounts/hall-gateway"
    )


def test_api_server_endpoints_from_the_endpoint_slice() -> None:
    slice_ = {
        "endpoints": [
            {"addresses": ["198.18.0.2"], "conditions": {"ready": True}},
            {"addresses": ["198.18.0.1"]},
            {"addresses": ["198.18.0.9"], "conditions": {"ready": False}},
        ],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    }
    assert endpoint_addresses(slice_) == [("198.18.0.1", 6443), ("198.18.0.2", 6443)]
    assert endpoint_addresses({}) == []


class NoApi:
    """Any Kubernetes call is a failure: a ServiceAccount subject needs no Secret."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected API call {name}")


def test_no_token_secret_is_generated_or_read_for_a_service_account_subject() -> None:
    policy = make_policy(SCHEDULER, {"name": "ops", "serviceAccount": {"name": "runner"}})
    tokens = asyncio.run(resolve_tokens(NoApi(), policy, b"k" * 32, b"p" * 32))
    assert tokens == PolicyTokens()


def test_child_events_find_their_core_also_for_cluster_scoped_children() -> None:
    binding_labels = {**CORE_LABELS, "qsys.dev/core-namespace": "av"}
    assert owner_of(None, binding_labels, ()) == ("av", "hall", "qsys-gateway")
    assert owner_of(None, binding_labels, ("av",)) == ("av", "hall", "qsys-gateway")
    # A binding of a core in a namespace this operator does not watch: not ours.
    assert owner_of(None, binding_labels, ("other",)) is None
    assert owner_of(None, CORE_LABELS, ()) is None  # cluster-scoped without the label
    assert owner_of("av", CORE_LABELS, ()) == ("av", "hall", "qsys-gateway")
    assert owner_of("av", {"app.kubernetes.io/name": "qsys-gateway"}, ()) is None
