"""The generated CRDs on a real API server: accepted, Established, the examples
apply, defaults come from the server, and invalid objects are rejected by the
schema or by a CEL rule."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client, utils
from kubernetes.client.exceptions import ApiException

from qsys_operator.api import AccessPolicy, QSysCore
from qsys_operator.render import PolicyBinding, render_core_children
from qsys_operator.settings import OperatorSettings
from qsys_protocol.config import AttackLimits
from qsys_testkit.checkout import REPO
from qsys_testkit.cluster import Cluster, api_error, must, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.floor]

GROUP, VERSION = "qsys.dev", "v1alpha1"
CRD_FILES = sorted((REPO / "crds").glob("qsys.dev_*.yaml"))


def _load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text("utf-8"))
    return doc


def _established(api: client.ApiextensionsV1Api, name: str) -> bool:
    crd = api.read_custom_resource_definition(name)
    conditions = (crd.status and crd.status.conditions) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> None:
    ext = client.ApiextensionsV1Api(cluster.api)
    for path in CRD_FILES:
        body = _load(path)
        name = body["metadata"]["name"]
        try:
            current = ext.read_custom_resource_definition(name)
            body["metadata"]["resourceVersion"] = must(current.metadata).resource_version
            # The client serialises a plain-dict body as is; its annotation names only the model.
            ext.replace_custom_resource_definition(name, body)  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status != 404:
                raise
            utils.create_from_dict(cluster.api, body)  # type: ignore[no-untyped-call]

        def established(n: str = name) -> bool:
            return _established(ext, n)

        wait_for(f"CRD {name} Established", established, timeout=60)


@pytest.fixture
def objects(cluster: Cluster, crds: None) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api)


def _example(name: str) -> dict[str, Any]:
    return _load(REPO / "examples" / name)


def _create(api: client.CustomObjectsApi, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    plural = {"QSysCore": "qsyscores", "AccessPolicy": "accesspolicies"}[body["kind"]]
    created = cast(
        dict[str, Any], api.create_namespaced_custom_object(GROUP, VERSION, ns, plural, body)
    )
    return created


def _rejected(api: client.CustomObjectsApi, ns: str, body: dict[str, Any]) -> str:
    exc = api_error(_create, api, ns, body)
    assert exc.status == 422, exc.body
    return str(exc.body)


def test_crds_established_with_names(cluster: Cluster, crds: None) -> None:
    ext = client.ApiextensionsV1Api(cluster.api)
    core = ext.read_custom_resource_definition("qsyscores.qsys.dev")
    assert core.spec.names.short_names == ["qcore"]
    assert "qsys" in must(core.spec.names.categories)
    policy = ext.read_custom_resource_definition("accesspolicies.qsys.dev")
    assert policy.spec.names.short_names == ["qpol"]


def test_examples_apply_and_server_fills_defaults(
    objects: client.CustomObjectsApi, namespace: str
) -> None:
    core = _create(objects, namespace, _example("qsyscore.yaml"))
    spec = core["spec"]
    assert spec["core"]["port"] == 1710
    assert spec["gateway"]["replicas"] == 2
    attack_defaults = AttackLimits().model_dump()
    assert spec["limits"] == {
        "requestsPerSecond": 20,
        "burst": 500,
        "maxClients": 1000,
        "maxMessageBytes": 262144,
        "requestTimeoutSeconds": 5,
        "storage": "memory",
        **attack_defaults,
    }
    assert spec["networkPolicy"]["enabled"] is True
    assert spec["monitoring"]["serviceMonitor"]["interval"] == "30s"
    assert spec["audit"] == {"logReads": False}

    policy = _create(objects, namespace, _example("accesspolicy.yaml"))
    assert policy["spec"]["rules"][0]["components"] == ["*"]
    assert policy["spec"]["subjects"][0]["tokenSecretRef"]["key"] == "token"


def test_minimal_core_gets_every_default(objects: client.CustomObjectsApi, namespace: str) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "QSysCore",
        "metadata": {"name": "minimal"},
        "spec": {"core": {"host": "192.0.2.10", "credentialsSecretRef": {"name": "creds"}}},
    }
    spec = _create(objects, namespace, body)["spec"]
    assert spec["core"]["credentialsSecretRef"] == {
        "name": "creds",
        "usernameKey": "username",
        "passwordKey": "password",
    }
    assert spec["gateway"]["replicas"] == 2
    assert spec["limits"]["burst"] == 500
    assert spec["networkPolicy"] == {"enabled": True, "coreCIDRs": []}
    assert spec["monitoring"]["serviceMonitor"]["enabled"] is True


def _core(**spec: Any) -> dict[str, Any]:
    body = _example("qsyscore.yaml")
    body["metadata"] = {"name": "invalid"}
    for key, value in spec.items():
        body["spec"][key] = value
    return body


def _policy(mutate: Any) -> dict[str, Any]:
    body = _example("accesspolicy.yaml")
    body["metadata"] = {"name": "invalid"}
    mutate(body["spec"])
    return body


def test_schema_rejections(objects: client.CustomObjectsApi, namespace: str) -> None:
    assert "replicas" in _rejected(objects, namespace, _core(gateway={"replicas": 0}))
    assert "port" in _rejected(objects, namespace, _core(core={"host": "10.0.0.1", "port": 0}))
    assert "host" in _rejected(objects, namespace, _core(core={"port": 1710}))
    assert "storage" in _rejected(objects, namespace, _core(limits={"storage": "http://x"}))
    body = _policy(lambda s: s.update(subjects=[{"name": "Not_A_Label"}]))
    assert "name" in _rejected(objects, namespace, body)
    body = _policy(lambda s: s.update(rules=[{"methods": []}]))
    assert "methods" in _rejected(objects, namespace, body)
    body = _policy(lambda s: s.update(subjects=[]))
    assert "subjects" in _rejected(objects, namespace, body)


def test_cel_dns_host_needs_core_cidrs(objects: client.CustomObjectsApi, namespace: str) -> None:
    dns = _core(core={"host": "core-hall.av.example"}, networkPolicy={})
    assert "coreCIDRs must be set" in _rejected(objects, namespace, dns)
    redundant = {"host": "192.0.2.10", "redundantHost": "core-b.av.example"}
    both = _core(core=redundant, networkPolicy={})
    assert "coreCIDRs must be set" in _rejected(objects, namespace, both)
    ok = _core(core={"host": "core-hall.av.example"}, networkPolicy={"coreCIDRs": ["192.0.2.0/28"]})
    _create(objects, namespace, ok)
    no_np = _core(core={"host": "core-b.av.example"}, networkPolicy={"enabled": False})
    no_np["metadata"]["name"] = "no-netpol"
    _create(objects, namespace, no_np)


def test_cel_core_cidrs_are_cidrs(objects: client.CustomObjectsApi, namespace: str) -> None:
    body = _core(networkPolicy={"coreCIDRs": ["192.0.2.0/99"]})
    assert "must be a CIDR" in _rejected(objects, namespace, body)


def test_cel_value_range_ordered(objects: client.CustomObjectsApi, namespace: str) -> None:
    def bad_range(spec: dict[str, Any]) -> None:
        spec["rules"][1]["valueRange"] = {"min": 5, "max": -5}

    message = _rejected(objects, namespace, _policy(bad_range))
    assert "valueRange.min must not be greater than valueRange.max" in message


def test_duplicate_subject_names_rejected(objects: client.CustomObjectsApi, namespace: str) -> None:
    body = _policy(lambda s: s.update(subjects=[{"name": "panel"}, {"name": "panel"}]))
    assert "Duplicate value" in _rejected(objects, namespace, body)


def test_cel_generated_secret_name_fits(objects: client.CustomObjectsApi, namespace: str) -> None:
    body = _policy(lambda s: s.update(subjects=[{"name": "s" * 63}]))
    body["metadata"]["name"] = "p" * 190
    assert "must not exceed 253 characters" in _rejected(objects, namespace, body)
    with_ref = copy.deepcopy(body)
    with_ref["spec"]["subjects"][0]["tokenSecretRef"] = {"name": "mine"}
    _create(objects, namespace, with_ref)


def test_cel_source_cidrs(objects: client.CustomObjectsApi, namespace: str) -> None:
    def sources(*cidrs: str, ref: bool = False) -> dict[str, Any]:
        subject: dict[str, Any] = {"name": "legacy-dsp", "sourceCIDRs": list(cidrs)}
        if ref:
            subject["tokenSecretRef"] = {"name": "mine"}
        return _policy(lambda s: s.update(subjects=[subject]))

    assert "must be a CIDR" in _rejected(objects, namespace, sources("192.0.2.300/32"))
    assert "no host bits set" in _rejected(objects, namespace, sources("192.0.2.7/24"))
    wide = "must be no wider than /24 (IPv4) or /64 (IPv6)"
    for cidrs in (("0.0.0.0/0",), ("0.0.0.0/1", "128.0.0.0/1"), ("::/1",), ("192.0.2.0/23",)):
        assert wide in _rejected(objects, namespace, sources(*cidrs)), cidrs
    assert "written canonically" in _rejected(objects, namespace, sources("2001:DB8::/64"))
    both = sources("192.0.2.7/32", ref=True)
    assert "a token or by sourceCIDRs, not both" in _rejected(objects, namespace, both)
    ok = sources("192.0.2.7/32", "2001:db8::/64", "198.51.100.0/24")
    ok["metadata"]["name"] = "legacy"
    created = _create(objects, namespace, ok)
    assert created["spec"]["subjects"][0]["sourceCIDRs"] == [
        "192.0.2.7/32",
        "2001:db8::/64",
        "198.51.100.0/24",
    ]


def test_status_is_a_subresource(objects: client.CustomObjectsApi, namespace: str) -> None:
    core = _example("qsyscore.yaml")
    core["status"] = {"subjects": 7}
    created = _create(objects, namespace, core)
    assert "subjects" not in created.get("status", {})
    patched = cast(
        dict[str, Any],
        objects.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "qsyscores", "auditorium", {"status": {"subjects": 3}}
        ),
    )
    assert patched["status"]["subjects"] == 3


def test_rendered_children_accepted_by_server(cluster: Cluster, namespace: str) -> None:
    """The renderers' manifests pass the API server's own validation (server-side dry run)."""
    core = QSysCore.model_validate(_example("qsyscore.yaml") | {"metadata": {"name": "hall"}})
    core.spec.gateway.tlsSecretName = "hall-tls"
    body = _example("accesspolicy.yaml")
    body["spec"]["coreRef"]["name"] = "hall"
    body["spec"]["subjects"].append({"name": "legacy-dsp", "sourceCIDRs": ["192.0.2.32/28"]})
    policy = AccessPolicy.model_validate(body)
    hashes = {"room-101-panel": "a" * 64, "ai-agent": "b" * 64}
    result = render_core_children(core, [PolicyBinding(policy, hashes)], OperatorSettings())
    netpol = next(o for o in result.objects if o["kind"] == "NetworkPolicy")
    assert result.subjects == 3
    assert {
        "from": [{"ipBlock": {"cidr": "192.0.2.32/28"}}],
        "ports": [{"protocol": "TCP", "port": 1710}],
    } in netpol["spec"]["ingress"]
    for manifest in result.objects:
        body = copy.deepcopy(manifest)
        body["metadata"]["namespace"] = namespace
        body["metadata"].pop("ownerReferences")  # the owner does not exist here
        utils.create_from_dict(  # type: ignore[no-untyped-call]
            cluster.api, body, namespace=namespace, dry_run="All"
        )
