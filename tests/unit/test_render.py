"""Renderers of the QSysCore children: names, labels, ownership, pod hardening, ports,
NetworkPolicy, PDB, ServiceMonitor, config Secret, restart hash, determinism."""

from __future__ import annotations

import base64
import copy
import hashlib
from typing import Any

import pytest
import yaml

from qsys_operator.api import AccessPolicy, QSysCore
from qsys_operator.kinds import (
    CLUSTER_ROLE_BINDING,
    HPA,
    NETWORK_POLICY,
    PDB,
    SERVICE_ACCOUNT,
    SERVICE_MONITOR,
)
from qsys_operator.render import (
    RESTART_HASH_ANNOTATION,
    ChildRef,
    PolicyBinding,
    RenderResult,
    render_core_children,
    render_token_key_secret,
    render_token_secret,
)
from qsys_operator.settings import DEFAULT_GATEWAY_IMAGE, OperatorSettings
from qsys_protocol.config import GatewayConfig, parse_config

SETTINGS = OperatorSettings()
LABELS = {
    "app.kubernetes.io/name": "qsys-gateway",
    "app.kubernetes.io/instance": "hall",
    "app.kubernetes.io/managed-by": "qsys-operator",
}


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def make_core(**spec: Any) -> QSysCore:
    body: dict[str, Any] = {
        "metadata": {"name": "hall", "namespace": "av", "uid": "core-uid", "generation": 1},
        "spec": {"core": {"host": "192.0.2.10"}},
    }
    for key, value in spec.items():
        body["spec"][key] = value
    return QSysCore.model_validate(body)


def make_policy(
    name: str,
    subjects: list[str] | list[dict[str, Any]],
    created: str = "2024-01-01T00:00:00Z",
    **spec: Any,
) -> AccessPolicy:
    """An AccessPolicy of core "hall"; a subject is a name or a whole subject object."""
    return AccessPolicy.model_validate(
        {
            "metadata": {
                "name": name,
                "namespace": "av",
                "uid": f"{name}-uid",
                "creationTimestamp": created,
            },
            "spec": {
                "coreRef": {"name": "hall"},
                "subjects": [{"name": s} if isinstance(s, str) else s for s in subjects],
                "rules": [{"methods": ["Control.Get"]}],
                **spec,
            },
        }
    )


def binding(policy: AccessPolicy) -> PolicyBinding:
    return PolicyBinding(
        policy, {s.name: sha(f"{policy.metadata.name}/{s.name}") for s in policy.spec.subjects}
    )


def render(core: QSysCore | None = None, *policies: AccessPolicy) -> RenderResult:
    return render_core_children(core or make_core(), [binding(p) for p in policies], SETTINGS)


def by_kind(result: RenderResult) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in result.objects}


def pod_spec(result: RenderResult) -> dict[str, Any]:
    spec: dict[str, Any] = by_kind(result)["Deployment"]["spec"]["template"]["spec"]
    return spec


def container(result: RenderResult) -> dict[str, Any]:
    c: dict[str, Any] = pod_spec(result)["containers"][0]
    return c


def config_of(result: RenderResult) -> dict[str, Any]:
    data = by_kind(result)["Secret"]["data"]["gateway.yaml"]
    parsed: dict[str, Any] = yaml.safe_load(base64.b64decode(data))
    return parsed


def test_children_names_labels_and_owner() -> None:
    result = render()
    names = [(o["kind"], o["metadata"]["name"]) for o in result.objects]
    # Apply order: the Deployment after what its pods mount and sit behind, so a gateway
    # pod never runs before its NetworkPolicy exists.
    assert names == [
        ("Secret", "hall-gateway-config"),
        ("Service", "hall-gateway"),
        ("NetworkPolicy", "hall-gateway"),
        ("PodDisruptionBudget", "hall-gateway"),
        ("Deployment", "hall-gateway"),
    ]
    assert result.service_monitor is not None
    for obj in [*result.objects, result.service_monitor]:
        meta = obj["metadata"]
        assert meta["namespace"] == "av"
        assert LABELS.items() <= meta["labels"].items()
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "qsys.dev/v1alpha1",
                "kind": "QSysCore",
                "name": "hall",
                "uid": "core-uid",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    # Without spec.gateway.autoscaling the HPA is the one optional child left out, and
    # without serviceAccount subjects the gateway's own identity.
    assert result.absent == [
        ChildRef(SERVICE_ACCOUNT, "hall-gateway"),
        ChildRef(CLUSTER_ROLE_BINDING, "qsys-gateway-tokenreview:av:hall"),
        ChildRef(HPA, "hall-gateway"),
    ]


def test_deployment_probes_and_ports() -> None:
    result = render()
    c = container(result)
    assert c["image"] == DEFAULT_GATEWAY_IMAGE
    assert c["args"] == ["--config", "/etc/qsys-gateway/gateway.yaml"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "http": 8080,
        "qrc": 1710,
        "metrics": 9090,
    }
    assert c["startupProbe"]["httpGet"]["path"] == "/livez"
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http", "scheme": "HTTP"}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    deployment = by_kind(result)["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "qsys-gateway",
        "app.kubernetes.io/instance": "hall",
    }
    assert deployment["spec"]["template"]["metadata"]["labels"] == LABELS


def test_pod_security_is_restricted() -> None:
    result = render()
    pod = pod_spec(result)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container(result)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_spread_across_nodes() -> None:
    spread = pod_spec(render())["topologySpreadConstraints"]
    host = next(s for s in spread if s["topologyKey"] == "kubernetes.io/hostname")
    assert host["maxSkew"] == 1
    assert host["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "hall"


def test_config_mounted_as_directory_with_tmp() -> None:
    result = render()
    mounts = {m["name"]: m for m in container(result)["volumeMounts"]}
    assert mounts["config"] == {
        "name": "config",
        "mountPath": "/etc/qsys-gateway",
        "readOnly": True,
    }
    assert all("subPath" not in m for m in mounts.values())
    assert mounts["tmp"]["mountPath"] == "/tmp"
    volumes = {v["name"]: v for v in pod_spec(result)["volumes"]}
    # One projected volume: kubelet swaps the config and the token key in one step.
    assert volumes["config"]["projected"]["sources"] == [
        {
            "secret": {
                "name": "hall-gateway-config",
                "items": [{"key": "gateway.yaml", "path": "gateway.yaml"}],
            }
        },
        {
            "secret": {
                "name": "hall-gateway-token-key",
                "items": [{"key": "key", "path": "token-key"}],
            }
        },
    ]
    assert "emptyDir" in volumes["tmp"]
    assert set(volumes) == {"config", "tmp"}


def test_credentials_and_tls_mounted_and_referenced() -> None:
    core = make_core(
        core={
            "host": "192.0.2.10",
            "credentialsSecretRef": {"name": "qrc", "usernameKey": "user"},
        },
        gateway={"tlsSecretName": "hall-tls"},
    )
    result = render(core)
    volumes = {v["name"]: v for v in pod_spec(result)["volumes"]}
    assert volumes["core-credentials"]["secret"]["secretName"] == "qrc"
    assert volumes["core-credentials"]["secret"]["items"] == [
        {"key": "user", "path": "username"},
        {"key": "password", "path": "password"},
    ]
    assert volumes["tls"]["secret"] == {
        "secretName": "hall-tls",
        "defaultMode": 0o440,
        "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
    }
    mounts = {m["name"]: m["mountPath"] for m in container(result)["volumeMounts"]}
    cfg = config_of(result)
    assert cfg["core"]["usernameFile"] == f"{mounts['core-credentials']}/username"
    assert cfg["core"]["passwordFile"] == f"{mounts['core-credentials']}/password"
    assert cfg["listen"]["tls"] == {
        "certFile": f"{mounts['tls']}/tls.crt",
        "keyFile": f"{mounts['tls']}/tls.key",
    }
    assert container(result)["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_pass_through_fields_and_image() -> None:
    gateway = {
        "image": "registry.local/gw:1",
        "resources": {"limits": {"cpu": "1"}},
        "nodeSelector": {"zone": "a"},
        "tolerations": [{"key": "av", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {"x": 1}},
        "podAnnotations": {"example.com/a": "b"},
    }
    result = render(make_core(gateway=gateway))
    pod = pod_spec(result)
    assert container(result)["image"] == "registry.local/gw:1"
    assert container(result)["resources"] == {"limits": {"cpu": "1"}}
    assert pod["nodeSelector"] == {"zone": "a"}
    assert pod["tolerations"] == [{"key": "av", "operator": "Exists"}]
    assert pod["affinity"] == {"nodeAffinity": {"x": 1}}
    annotations = by_kind(result)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["example.com/a"] == "b"
    assert RESTART_HASH_ANNOTATION in annotations


def test_gateway_pull_secrets_and_priority_class_come_from_settings() -> None:
    assert "imagePullSecrets" not in pod_spec(render())
    assert "priorityClassName" not in pod_spec(render())
    settings = OperatorSettings.from_env(
        {
            "QSYS_GATEWAY_IMAGE_PULL_SECRETS": "regcred, mirror-cred",
            "QSYS_GATEWAY_PRIORITY_CLASS_NAME": "av-critical",
        }
    )
    pod = pod_spec(render_core_children(make_core(), [], settings))
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror-cred"}]
    assert pod["priorityClassName"] == "av-critical"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("QSYS_GATEWAY_IMAGE_PULL_SECRETS", "Not_A_Name"),
        ("QSYS_GATEWAY_PRIORITY_CLASS_NAME", "bad name"),
    ],
)
def test_gateway_pod_settings_reject_invalid_names(var: str, value: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        OperatorSettings.from_env({var: value})


def test_service_ports() -> None:
    svc = by_kind(render())["Service"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        ("http", 8080, "http"),
        ("qrc", 1710, "qrc"),
        ("metrics", 9090, "metrics"),
    ]
    assert svc["spec"]["selector"]["app.kubernetes.io/instance"] == "hall"


def _egress_cidrs(np: dict[str, Any]) -> list[str]:
    return [peer["ipBlock"]["cidr"] for peer in np["spec"]["egress"][0]["to"]]


def test_network_policy_ip_hosts() -> None:
    core = make_core(core={"host": "192.0.2.10", "redundantHost": "192.0.2.11", "port": 1711})
    np = by_kind(render(core))["NetworkPolicy"]
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert _egress_cidrs(np) == ["192.0.2.10/32", "192.0.2.11/32"]
    assert np["spec"]["egress"][0]["ports"] == [{"protocol": "TCP", "port": 1711}]
    dns = np["spec"]["egress"][1]
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    assert dns["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kube-system"
    }
    assert len(np["spec"]["egress"]) == 2
    clients, metrics = np["spec"]["ingress"]
    assert clients["from"] == [{"podSelector": {}}]
    assert clients["ports"] == [
        {"protocol": "TCP", "port": 8080},
        {"protocol": "TCP", "port": 1710},
    ]
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "qsys-system"}}},
    ]
    assert metrics["ports"] == [{"protocol": "TCP", "port": 9090}]


def test_network_policy_dns_host_uses_core_cidrs_and_allowed_clients() -> None:
    peers = [{"namespaceSelector": {"matchLabels": {"team": "av"}}}]
    core = make_core(
        core={"host": "core.av.example"},
        networkPolicy={"coreCIDRs": ["192.0.2.0/28"], "allowedClients": peers},
    )
    settings = OperatorSettings(monitoring_namespace="prom", operator_namespace="prom")
    result = render_core_children(core, [], settings)
    np = by_kind(result)["NetworkPolicy"]
    assert _egress_cidrs(np) == ["192.0.2.0/28"]
    assert np["spec"]["ingress"][0]["from"] == peers
    assert np["spec"]["ingress"][1]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prom"}}}
    ]


def test_network_policy_allows_redis_storage_only_where_the_platform_allows() -> None:
    core = make_core(limits={"storage": "redis://redis.av.svc:6380/0"})
    allowed = OperatorSettings(gateway_egress_namespaces=("redis", "av", "redis"))
    result = render_core_children(core, [], allowed)
    egress = by_kind(result)["NetworkPolicy"]["spec"]["egress"]
    in_namespaces = {
        "key": "kubernetes.io/metadata.name",
        "operator": "In",
        "values": ["av", "redis"],
    }
    assert egress[2:] == [
        {
            "to": [{"namespaceSelector": {"matchExpressions": [in_namespaces]}}],
            "ports": [{"protocol": "TCP", "port": 6380}],
        }
    ]
    assert result.egress_note is None
    # Default: no namespace allowed, so no egress at all for a DNS name, and a note.
    result = render(core)
    assert len(by_kind(result)["NetworkPolicy"]["spec"]["egress"]) == 2
    assert result.egress_note is not None
    assert "limits.storage" in result.egress_note
    # Never every namespace, never any port but the one named.
    for settings in (SETTINGS, allowed):
        for rule in by_kind(render_core_children(core, [], settings))["NetworkPolicy"]["spec"][
            "egress"
        ]:
            assert {"namespaceSelector": {}} not in rule["to"]
            assert all("port" in p for p in rule["ports"])
    ip = make_core(limits={"storage": "redis://10.0.0.5/0"})
    assert by_kind(render(ip))["NetworkPolicy"]["spec"]["egress"][2] == {
        "to": [{"ipBlock": {"cidr": "10.0.0.5/32"}}],
        "ports": [{"protocol": "TCP", "port": 6379}],
    }


def test_network_policy_allows_each_sentinel_and_the_primary_beside_them() -> None:
    storage = "redis+sentinel://:pw@10.0.0.7:26380,10.0.0.8,sentinel.av.svc:26379/qsys/1"
    egress = by_kind(render(make_core(limits={"storage": storage})))["NetworkPolicy"]["spec"][
        "egress"
    ]
    one: dict[str, Any] = {"ipBlock": {"cidr": "10.0.0.7/32"}}
    two: dict[str, Any] = {"ipBlock": {"cidr": "10.0.0.8/32"}}
    # The DNS-named sentinel: nothing by default, the allowed namespaces when set.
    assert egress[2:] == [
        {"to": [one], "ports": [{"protocol": "TCP", "port": 26380}]},
        {"to": [two], "ports": [{"protocol": "TCP", "port": 26379}]},
        {"to": [one, two], "ports": [{"protocol": "TCP", "port": 6379}]},
    ]
    allowed = OperatorSettings(gateway_egress_namespaces=("av",))
    core = make_core(limits={"storage": storage})
    egress = by_kind(render_core_children(core, [], allowed))["NetworkPolicy"]["spec"]["egress"]
    named: dict[str, Any] = {
        "namespaceSelector": {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["av"]}
            ]
        }
    }
    assert egress[2:] == [
        {"to": [one], "ports": [{"protocol": "TCP", "port": 26380}]},
        {"to": [two], "ports": [{"protocol": "TCP", "port": 26379}]},
        {"to": [named], "ports": [{"protocol": "TCP", "port": 26379}]},
        {"to": [one, two, named], "ports": [{"protocol": "TCP", "port": 6379}]},
    ]


def test_gateway_config_names_its_core_for_the_rate_limit_buckets() -> None:
    assert config_of(render())["qsysCore"] == {"namespace": "av", "name": "hall"}


def test_network_policy_disabled_is_absent() -> None:
    core = make_core(core={"host": "core.av.example"}, networkPolicy={"enabled": False})
    result = render(core)
    assert "NetworkPolicy" not in by_kind(result)
    assert ChildRef(NETWORK_POLICY, "hall-gateway") in result.absent


def test_pdb_only_with_more_than_one_replica() -> None:
    assert by_kind(render())["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    single = render(make_core(gateway={"replicas": 1}))
    assert "PodDisruptionBudget" not in by_kind(single)
    assert ChildRef(PDB, "hall-gateway") in single.absent


def test_service_monitor() -> None:
    core = make_core(monitoring={"serviceMonitor": {"interval": "15s", "labels": {"release": "p"}}})
    sm = render(core).service_monitor
    assert sm is not None
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "p"
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    off = render(make_core(monitoring={"serviceMonitor": {"enabled": False}}))
    assert off.service_monitor is None
    assert ChildRef(SERVICE_MONITOR, "hall-gateway") in off.absent


def test_config_secret_parses_and_holds_only_hashes(tmp_path: Any) -> None:
    policy = make_policy("ops", ["panel", "agent"], rateLimit={"requestsPerSecond": 5, "burst": 10})
    core = make_core(
        limits={
            "maxClients": 10,
            "requestTimeoutSeconds": 2,
            "maxBatchCalls": 7,
            "maxUnauthenticatedClientsPerSource": 3,
            "headerTimeoutSeconds": 4.5,
        },
        audit={"logReads": True},
        gateway={"allowedOrigins": ["https://panel.example"], "qrcOnCoreLoss": "keep"},
    )
    result = render(core, policy)
    secret = by_kind(result)["Secret"]
    assert secret["type"] == "Opaque"
    text = base64.b64decode(secret["data"]["gateway.yaml"]).decode()
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    cfg = parse_config(yaml.safe_load(path.read_text()))
    assert cfg == result.config
    assert cfg.auth.tokenKeyFile == "/etc/qsys-gateway/token-key"
    assert [s.name for s in cfg.subjects] == ["agent", "panel"]
    assert cfg.subjects[0].tokenHmacSha256 == sha("ops/agent")
    assert cfg.subjects[0].tokenSha256 is None
    assert "ops/agent" not in text
    assert cfg.subjects[0].rate is not None
    assert cfg.subjects[0].rate.requestsPerSecond == 5
    assert cfg.subjects[0].rules[0].methods == ["Control.Get"]
    assert cfg.core.host == "192.0.2.10"
    assert cfg.core.requestTimeoutSeconds == 2
    assert cfg.limits.maxClients == 10
    # the abuse bounds pass through as they are (docs/security.md)
    assert cfg.limits.maxBatchCalls == 7
    assert cfg.limits.maxUnauthenticatedClientsPerSource == 3
    assert cfg.limits.headerTimeoutSeconds == 4.5
    assert cfg.limits.maxChangeGroupsPerSubject == 5000
    assert cfg.limits.maxHubControlsPerSubject == 1024
    assert cfg.audit.logReads is True
    assert cfg.cors.allowedOrigins == ["https://panel.example"]
    assert cfg.listen.qrcOnCoreLoss == "keep"
    assert render(make_core(), policy).config.listen.qrcOnCoreLoss == "close"
    assert result.subjects == 2


def test_policies_for_other_cores_are_ignored() -> None:
    other = make_policy("elsewhere", ["x"], coreRef={"name": "other"})
    assert render(None, other).subjects == 0


def _restart_hash(result: RenderResult) -> str:
    annotations = by_kind(result)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    value: str = annotations[RESTART_HASH_ANNOTATION]
    assert value == result.restart_hash
    return value


def test_restart_hash_follows_core_not_policy() -> None:
    base = _restart_hash(render(None, make_policy("ops", ["panel"])))
    assert base == _restart_hash(render(None, make_policy("ops", ["panel", "agent"])))
    assert base == _restart_hash(
        render(make_core(limits={"requestsPerSecond": 3}), make_policy("ops", ["panel"]))
    )
    for changed in (
        make_core(core={"host": "192.0.2.99"}),
        make_core(core={"host": "192.0.2.10", "port": 1711}),
        make_core(gateway={"tlsSecretName": "tls"}),
        make_core(limits={"storage": "redis://10.0.0.5:6379/0"}),
        make_core(limits={"requestTimeoutSeconds": 9}),
    ):
        assert _restart_hash(render(changed, make_policy("ops", ["panel"]))) != base


def test_policy_change_touches_only_config_secret() -> None:
    before = render(None, make_policy("ops", ["panel"]))
    after = render(None, make_policy("ops", ["panel", "agent"]))
    changed = [a["kind"] for a, b in zip(after.objects, before.objects, strict=True) if a != b]
    assert changed == ["Secret"]


def test_duplicate_subjects_reported_oldest_policy_wins() -> None:
    old = make_policy("zeta", ["panel", "agent"], created="2024-01-01T00:00:00Z")
    new = make_policy("alpha", ["panel", "kiosk"], created="2024-06-01T00:00:00Z")
    for order in ((old, new), (new, old)):
        result = render(None, *order)
        assert [(c.subject, c.policy, c.kept_by, c.reason) for c in result.conflicts] == [
            ("panel", "alpha", "zeta", "duplicate-name")
        ]
        cfg = result.config
        assert [s.name for s in cfg.subjects] == ["agent", "kiosk", "panel"]
        panel = cfg.subject("panel")
        assert panel is not None
        assert panel.tokenHmacSha256 == sha("zeta/panel")


def test_same_timestamp_tie_broken_by_name() -> None:
    a = make_policy("a", ["panel"])
    b = make_policy("b", ["panel"])
    assert render(None, b, a).conflicts[0].kept_by == "a"


def test_shared_token_reported_and_unresolved_listed() -> None:
    p1 = make_policy("p1", ["one"])
    p2 = make_policy("p2", ["two", "three"], created="2025-01-01T00:00:00Z")
    bindings = [
        PolicyBinding(p1, {"one": sha("same")}),
        PolicyBinding(p2, {"two": sha("same")}),
    ]
    result = render_core_children(make_core(), bindings, SETTINGS)
    assert [(c.subject, c.reason, c.kept_by) for c in result.conflicts] == [
        ("two", "duplicate-token", "p1")
    ]
    assert [(u.policy, u.subject) for u in result.unresolved] == [("p2", "three")]
    assert result.subjects == 1
    GatewayConfig.model_validate(result.config.model_dump())


def test_deterministic() -> None:
    policies = [make_policy("b", ["x", "y"]), make_policy("a", ["z"])]
    core = make_core(
        gateway={"podAnnotations": {"z": "1", "a": "2"}, "nodeSelector": {"b": "1", "a": "2"}}
    )
    first = render(core, *policies)
    second = render(copy.deepcopy(core), *reversed(policies))
    assert first.objects == second.objects
    assert first.service_monitor == second.service_monitor
    assert yaml.safe_dump(first.objects) == yaml.safe_dump(second.objects)
    annotations = by_kind(first)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert list(annotations) == ["a", "z", RESTART_HASH_ANNOTATION]


def test_token_secret() -> None:
    policy = make_policy("ops", ["agent"])
    secret = render_token_secret(policy, "agent", "s3cret")
    assert secret["metadata"]["name"] == "ops-agent-token"
    assert secret["metadata"]["namespace"] == "av"
    assert base64.b64decode(secret["data"]["token"]) == b"s3cret"
    owner = secret["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "AccessPolicy"
    assert owner["uid"] == "ops-uid"
    assert owner["controller"] is True
    assert owner["blockOwnerDeletion"] is True
    assert secret["metadata"]["labels"]["qsys.dev/secret-type"] == "client-token"


def test_token_key_secret_is_owned_by_the_core() -> None:
    secret = render_token_key_secret(make_core(), "k" * 43)
    assert secret["metadata"]["name"] == "hall-gateway-token-key"
    assert LABELS.items() <= secret["metadata"]["labels"].items()
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "core-uid"
    assert base64.b64decode(secret["data"]["key"]) == b"k" * 43


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, OperatorSettings()),
        (
            {
                "QSYS_GATEWAY_IMAGE": "r/gw:2",
                "QSYS_WATCH_NAMESPACES": "a, b",
                "QSYS_MONITORING_NAMESPACE": "prom",
                "QSYS_DNS_POD_LABELS": "k8s-app=coredns",
                "QSYS_OPERATOR_NAMESPACE": "ops",
                "QSYS_GATEWAY_PROBE": "false",
                "QSYS_GATEWAY_PROBE_CIDRS": "127.0.0.0/8",
                "QSYS_RESYNC_SECONDS": "2.5",
                "QSYS_GATEWAY_ALLOWED_IMAGES": "r/gw, r/gw@sha256:" + "a" * 64,
                "QSYS_GATEWAY_EGRESS_NAMESPACES": "monitoring,redis",
                "QSYS_ALLOW_UNBOUND_CREDENTIALS": "true",
            },
            OperatorSettings(
                gateway_image="r/gw:2",
                watch_namespaces=("a", "b"),
                monitoring_namespace="prom",
                dns_pod_labels={"k8s-app": "coredns"},
                operator_namespace="ops",
                gateway_probe=False,
                gateway_probe_cidrs=("127.0.0.0/8",),
                resync_seconds=2.5,
                gateway_allowed_images=("r/gw", "r/gw@sha256:" + "a" * 64),
                gateway_egress_namespaces=("monitoring", "redis"),
                allow_unbound_credentials=True,
            ),
        ),
    ],
)
def test_settings_from_env(env: dict[str, str], expected: OperatorSettings) -> None:
    assert OperatorSettings.from_env(env) == expected


def test_settings_refuse_a_tagged_allow_list_entry_at_start() -> None:
    with pytest.raises(ValueError, match="not a tag"):
        OperatorSettings.from_env({"QSYS_GATEWAY_ALLOWED_IMAGES": "r/gw:1"})
    assert OperatorSettings().allow_unbound_credentials is False
    assert OperatorSettings().gateway_egress_namespaces == ()
