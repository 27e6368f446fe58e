"""The running operator on the real control plane: children, drift, policies, tokens, status,
a real gateway started from the rendered config, ServiceMonitor discovery, restart and peering."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_support import (
    Operator,
    StandInGateway,
    condition,
    core_body,
    create,
    events,
    get,
    patch,
    policy_body,
    running_operator,
    wait_condition,
)

from qsys_testkit import SimulatorProcess
from qsys_testkit.checkout import REPO
from qsys_testkit.cluster import Cluster, must, wait_for
from qsys_testkit.kube import apply_crds, secret_text

pytestmark = [pytest.mark.e2e, pytest.mark.floor]

BYO_ONE = "byo-token-one-Jq3vX8wLr2Tz7KpN4sYd"
BYO_TWO = "byo-token-two-Hm6cR9eWq1Ub5GfA8tZx"
LABELS = {
    "app.kubernetes.io/name": "qsys-gateway",
    "app.kubernetes.io/managed-by": "qsys-operator",
}
SM_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> None:
    apply_crds(cluster.api, REPO / "crds")


@pytest.fixture
def operator(cluster: Cluster, crds: None, namespace: str, tmp_path: Path) -> Iterator[Operator]:
    with running_operator(cluster, namespace, tmp_path / "operator.log") as op:
        yield op


def _config(cluster: Cluster, ns: str, core: str) -> str | None:
    return secret_text(cluster.api, ns, f"{core}-gateway-config", "gateway.yaml")


def test_children_drift_update_and_cascade(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    ns = namespace
    core = create(cluster, ns, core_body("hall", 1710, replicas=2))
    create(cluster, ns, policy_body("ops", "hall", [{"name": "agent"}]))
    apps, v1 = client.AppsV1Api(cluster.api), client.CoreV1Api(cluster.api)
    net, pol = client.NetworkingV1Api(cluster.api), client.PolicyV1Api(cluster.api)

    dep = wait_for("Deployment", lambda: _get(apps.read_namespaced_deployment, "hall-gateway", ns))
    children = [
        dep,
        wait_for("Service", lambda: _get(v1.read_namespaced_service, "hall-gateway", ns)),
        wait_for("Secret", lambda: _get(v1.read_namespaced_secret, "hall-gateway-config", ns)),
        wait_for("NP", lambda: _get(net.read_namespaced_network_policy, "hall-gateway", ns)),
        wait_for(
            "PDB", lambda: _get(pol.read_namespaced_pod_disruption_budget, "hall-gateway", ns)
        ),
    ]
    for child in children:
        assert LABELS.items() <= child.metadata.labels.items()
        assert child.metadata.labels["app.kubernetes.io/instance"] == "hall"
        (owner,) = child.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid) == ("QSysCore", "hall", core["metadata"]["uid"])
        assert owner.controller is True
    tpl = dep.spec.template.spec
    assert tpl.containers[0].security_context.read_only_root_filesystem is True
    assert tpl.containers[0].readiness_probe.http_get.path == "/readyz"
    assert {p.port for p in children[1].spec.ports} == {8080, 1710, 9090}
    metrics_from = children[3].spec.ingress[1]._from
    assert {
        p.namespace_selector.match_labels["kubernetes.io/metadata.name"] for p in metrics_from
    } == {
        "monitoring",
        ns,
    }

    # Status: available replicas reflected, subjects counted, ServiceMonitor absence explained.
    def gateway_ready() -> dict[str, Any] | None:
        obj = get(cluster, ns, "QSysCore", "hall")
        status = obj.get("status") or {}
        return obj if (status.get("gateway") or {}).get("readyReplicas") == 2 else None

    obj = wait_for("status.gateway.readyReplicas=2", gateway_ready, timeout=60)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert obj["status"]["subjects"] == 1
    assert condition(obj, "GatewayAvailable")["status"] == "True"
    assert "ServiceMonitor not created" in condition(obj, "Ready")["message"]
    assert condition(obj, "CoreConnected")["status"] == "Unknown"  # no gateway answers yet
    wait_for("Events", lambda: any("GatewayAvailable" in e for e in events(cluster, ns, "hall")))

    # Drift: a manual scale and a deleted Service are corrected.
    apps.patch_namespaced_deployment("hall-gateway", ns, {"spec": {"replicas": 5}})
    wait_for(
        "replicas corrected",
        lambda: apps.read_namespaced_deployment("hall-gateway", ns).spec.replicas == 2,
        timeout=30,
    )
    old_uid = children[1].metadata.uid
    v1.delete_namespaced_service("hall-gateway", ns)
    wait_for(
        "Service recreated",
        lambda: (
            (_get(v1.read_namespaced_service, "hall-gateway", ns) or _NONE).metadata.uid
            not in (None, old_uid)
        ),
        timeout=30,
    )

    # Idempotent: nothing is rewritten while nothing changes (the Deployment's status
    # is the controllers' to update, so its spec generation is compared).
    rv = {
        "dep": must(apps.read_namespaced_deployment("hall-gateway", ns).metadata).generation,
        "cfg": _rv(v1.read_namespaced_secret("hall-gateway-config", ns)),
    }
    time.sleep(3)  # three resyncs
    assert rv == {
        "dep": must(apps.read_namespaced_deployment("hall-gateway", ns).metadata).generation,
        "cfg": _rv(v1.read_namespaced_secret("hall-gateway-config", ns)),
    }

    # A policy change re-renders the config but does not restart pods.
    restart = dep.spec.template.metadata.annotations["qsys.dev/restart-hash"]
    patch(cluster, ns, "AccessPolicy", "ops", {"spec": {"rules": [{"methods": ["NoOp"]}]}})
    wait_for("config re-rendered", lambda: "NoOp" in (_config(cluster, ns, "hall") or ""))
    dep2 = apps.read_namespaced_deployment("hall-gateway", ns)
    assert must(must(dep2.spec.template.metadata).annotations)["qsys.dev/restart-hash"] == restart

    # A spec change rolls out; replicas 1 drops the PDB.
    patch(cluster, ns, "QSysCore", "hall", {"spec": {"gateway": {"replicas": 1}}})
    wait_for(
        "PDB removed",
        lambda: _get(pol.read_namespaced_pod_disruption_budget, "hall-gateway", ns) is None,
    )
    assert apps.read_namespaced_deployment("hall-gateway", ns).spec.replicas == 1

    # Delete: the garbage collector removes every child.
    client.CustomObjectsApi(cluster.api).delete_namespaced_custom_object(
        "qsys.dev", "v1alpha1", ns, "qsyscores", "hall"
    )
    wait_for(
        "cascade",
        lambda: (
            _get(apps.read_namespaced_deployment, "hall-gateway", ns) is None
            and _get(v1.read_namespaced_secret, "hall-gateway-config", ns) is None
        ),
        timeout=60,
    )
    wait_condition(cluster, ns, "AccessPolicy", "ops", "Bound", "False", timeout=30)
    assert 'qsys_operator_reconcile_total{kind="QSysCore",result="success"}' in operator.metrics()


@pytest.mark.local_cluster  # a stand-in gateway on the host at a kwok pod's loopback address
def test_policy_first_tokens_real_gateway_and_core_connection(
    cluster: Cluster, operator: Operator, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    v1 = client.CoreV1Api(cluster.api)
    v1.create_namespaced_secret(
        ns,
        client.V1Secret(
            metadata=client.V1ObjectMeta(
                name="byo", labels={"qsys.dev/secret-type": "client-token"}
            ),
            string_data={"token": BYO_ONE},
        ),
    )
    create(
        cluster,
        ns,
        policy_body(
            "panel",
            "room",
            [{"name": "gen"}, {"name": "own", "tokenSecretRef": {"name": "byo"}}],
            tokenGracePeriodSeconds=0,  # the old BYO token is refused at once (below)
        ),
    )
    pol = wait_condition(cluster, ns, "AccessPolicy", "panel", "Bound", "False")
    assert condition(pol, "Bound")["reason"] == "CoreNotFound"
    assert "room" in condition(pol, "Bound")["message"]
    generated = wait_for("token", lambda: secret_text(cluster.api, ns, "panel-gen-token", "token"))
    # A duplicate subject name in a later policy is reported, not merged (the older
    # policy keeps it; "zdup" also sorts after "panel" should both share a second).
    create(cluster, ns, policy_body("zdup", "room", [{"name": "gen"}]))

    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(SimulatorProcess())
        create(cluster, ns, core_body("room", sim.port))
        wait_condition(cluster, ns, "AccessPolicy", "panel", "Bound", "True")

        def conflict() -> dict[str, object] | None:
            d = get(cluster, ns, "AccessPolicy", "zdup")
            return d if condition(d, "Ready").get("reason") == "SubjectConflict" else None

        dup = wait_for("zdup Ready=False SubjectConflict", conflict)
        assert condition(dup, "Ready")["status"] == "False"
        assert condition(dup, "Bound")["status"] == "True"
        assert "panel" in condition(dup, "Ready")["message"]
        assert (
            secret_text(cluster.api, ns, "panel-gen-token", "token") == generated
        )  # not regenerated
        pol = get(cluster, ns, "AccessPolicy", "panel")
        assert pol["status"]["tokenSecrets"] == {"gen": "panel-gen-token", "own": "byo"}

        config = wait_for("config", lambda: _config(cluster, ns, "room"))
        assert generated not in config
        assert BYO_ONE not in config
        pod_ip = wait_for("pod IP", lambda: _pod_ip(cluster, ns, "room"))
        assert pod_ip.startswith("127.")
        key = must(secret_text(cluster.api, ns, "room-gateway-token-key", "key"))
        gw = StandInGateway(tmp_path, config, pod_ip, key)
        stack.callback(gw.stop)
        gw.start()
        status, body = gw.rpc(generated, "StatusGet")
        assert status == 200, body
        status, body = gw.rpc(BYO_ONE, "StatusGet")
        assert status == 200, body
        status, body = gw.rpc(generated, "Control.Set", {"Name": "gain", "Value": 1})
        assert status == 403
        assert body["error"]["code"] == -32003
        status, _ = gw.rpc("wrong-token", "StatusGet")
        assert status == 401

        core = wait_condition(cluster, ns, "QSysCore", "room", "CoreConnected", "True")
        assert core["status"]["core"]["designName"]
        assert core["status"]["core"]["state"] == "Active"
        assert condition(core, "Ready")["status"] == "True"

        # BYO Secret change followed: the config changes and the gateway reloads it.
        v1.patch_namespaced_secret("byo", ns, {"stringData": {"token": BYO_TWO}})
        new = wait_for(
            "BYO change followed",
            lambda: (c := _config(cluster, ns, "room")) != config and c,
            timeout=30,
        )
        assert isinstance(new, str)
        gw.write(new)
        wait_for("new BYO token", lambda: gw.rpc(BYO_TWO, "StatusGet")[0] == 200)
        assert gw.rpc(BYO_ONE, "StatusGet")[0] == 401

        # The Core goes away: the gateway reports it, the status follows.
        sim.kill()
        core = wait_condition(cluster, ns, "QSysCore", "room", "CoreConnected", "False", timeout=45)
        assert condition(core, "CoreConnected")["reason"] == "CoreUnreachable"
        assert condition(core, "Ready")["status"] == "False"
    assert generated not in operator.output()


def test_service_monitor_when_crd_installed_later(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    ext = client.ApiextensionsV1Api(cluster.api)
    custom = client.CustomObjectsApi(cluster.api)
    create(cluster, namespace, core_body("mon", 1710))

    def noted() -> bool:
        ready = condition(get(cluster, namespace, "QSysCore", "mon"), "Ready")
        return "ServiceMonitor not created" in ready.get("message", "")

    wait_for("ServiceMonitor absence in the Ready message", noted)
    ext.create_custom_resource_definition(yaml.safe_load(SM_CRD))
    try:
        sm = wait_for(
            "ServiceMonitor",
            lambda: _get(
                custom.get_namespaced_custom_object,
                "monitoring.coreos.com",
                "v1",
                namespace,
                "servicemonitors",
                "mon-gateway",
            ),
            timeout=60,
        )
        assert sm["spec"]["endpoints"][0]["port"] == "metrics"
        assert sm["metadata"]["ownerReferences"][0]["name"] == "mon"
    finally:
        ext.delete_custom_resource_definition("servicemonitors.monitoring.coreos.com")


def test_restart_mid_work_and_two_replicas(
    cluster: Cluster, crds: None, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    first = Operator(cluster, ns, tmp_path / "a.log").start()
    try:
        create(cluster, ns, core_body("pair", 1710))
        create(cluster, ns, policy_body("p", "pair", [{"name": f"s{i}"} for i in range(6)]))
        time.sleep(0.5)
    finally:
        first.kill()  # in the middle of the work
    with (
        running_operator(cluster, ns, tmp_path / "b.log") as b,
        running_operator(cluster, ns, tmp_path / "c.log") as c,
    ):
        wait_condition(cluster, ns, "AccessPolicy", "p", "Ready", "True", timeout=60)
        v1 = client.CoreV1Api(cluster.api)
        tokens = [
            s
            for s in v1.list_namespaced_secret(ns).items
            if _name(s).startswith("p-") and _name(s).endswith("-token")
        ]
        assert sorted(_name(s) for s in tokens) == [f"p-s{i}-token" for i in range(6)]
        before = {_name(s): _rv(s) for s in tokens}
        cfg = _rv(v1.read_namespaced_secret("pair-gateway-config", ns))
        time.sleep(4)  # both replicas alive: nothing flaps
        assert _rv(v1.read_namespaced_secret("pair-gateway-config", ns)) == cfg
        after = {
            _name(s): _rv(s) for s in v1.list_namespaced_secret(ns).items if _name(s) in before
        }
        assert after == before
        logs = b.output() + c.output()
        assert "Pausing operations in favour of" in logs  # exactly one replica is active


_NONE = type("_None", (), {"metadata": type("_M", (), {"uid": None})()})()


def _name(obj: client.V1Secret) -> str:
    return must(must(obj.metadata).name)


def _rv(obj: client.V1Secret) -> str | None:
    return must(obj.metadata).resource_version


def _get(fn: Callable[..., Any], *args: object) -> Any:
    """fn(*args), or None on 404: an API model or, for custom objects, a JSON-like dict."""
    try:
        return fn(*args)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _pod_ip(cluster: Cluster, ns: str, core: str) -> str | None:
    pods = client.CoreV1Api(cluster.api).list_namespaced_pod(
        ns, label_selector=f"app.kubernetes.io/instance={core}"
    )
    ready = [must(p.status).pod_ip for p in pods.items if must(p.status).pod_ip]
    return ready[0] if ready else None
