"""The Reconciler against an in-memory Kubernetes (fake_kube.FakeKube): what one reconcile
creates, repairs, refuses, deletes and reports, and which API calls it makes.

Ownership rules and name conflicts in depth: test_operator_ownership.py. The real API
server: tests/e2e/test_operator.py."""

from __future__ import annotations

import asyncio
import base64
import copy
from typing import Any

import yaml
from fake_kube import CORE_UID, MANAGED, NS, FakeKube, ready, reconcile, running

from qsys_operator.kinds import (
    CHILDREN,
    CLUSTER_ROLE_BINDING,
    DEPLOYMENT,
    HPA,
    NETWORK_POLICY,
    SECRET,
    SERVICE,
    SERVICE_ACCOUNT,
    Kind,
)
from qsys_operator.reconcile import MAX_CONCURRENT_RECONCILES, Reconciler
from qsys_operator.render import CONFIG_KEY

BINDING = "qsys-gateway-tokenreview:av:hall"
FOREIGN_IMAGE = "registry.example/someone/gateway:1.0"


def _owned_by_core() -> list[dict[str, object]]:
    return [
        {
            "apiVersion": "qsys.dev/v1alpha1",
            "kind": "QSysCore",
            "name": "hall",
            "uid": CORE_UID,
            "controller": True,
        }
    ]


def _watch_sees(rec: Reconciler, kube: FakeKube, *kinds: Kind) -> None:
    """The child watch tells of every stored object of `kinds` (default: every child kind)."""
    for (plural, ns, name), obj in list(kube.objects.items()):
        kind = next((k for k in kinds or CHILDREN if k.plural == plural), None)
        if kind is not None:
            rec.child_seen(kind, ns, name, obj["metadata"])


def _core_with_policy(kube: FakeKube, **spec: Any) -> None:
    kube.put_core(**spec)
    kube.put_policy("lobby")
    kube.deployments_available = True


def test_a_new_core_gets_its_secrets_children_and_ready_status() -> None:
    kube = FakeKube()
    _core_with_policy(kube)
    reconcile(kube)

    assert sorted(kube.created) == [
        ("Secret", "hall-gateway-token-key"),
        ("Secret", "lobby-lobby-client-token"),
        ("Secret", "qsys-operator-token-proof-key"),
    ]
    assert {k for k, _ in kube.applied} == {
        "Secret",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "PodDisruptionBudget",
    }
    assert kube.get(DEPLOYMENT, "hall-gateway") is not None
    assert kube.get(SERVICE, "hall-gateway") is not None
    assert kube.get(NETWORK_POLICY, "hall-gateway") is not None
    assert kube.get(SECRET, "hall-gateway-config") is not None

    core = kube.status("qsyscores", "hall")
    assert core["observedGeneration"] == 1
    assert (ready(kube)["status"], ready(kube)["reason"]) == ("True", "Ready")
    policy = kube.status("accesspolicies", "lobby")
    assert policy["tokenSecrets"] == {"lobby-client": "lobby-lobby-client-token"}
    assert kube.condition("accesspolicies", "lobby")["status"] == "True"
    assert kube.condition("accesspolicies", "lobby", "Bound")["reason"] == "CoreFound"
    assert ("hall", "Normal", "Ready") in [e[:3] for e in kube.events]


def test_the_phases_read_first_create_secrets_before_applying_and_write_status_last() -> None:
    kube = FakeKube()
    _core_with_policy(kube)
    reconcile(kube)
    calls = kube.calls
    # fetch: reads only
    assert calls[:2] == ["get_core", "list_custom accesspolicies spec.coreRef.name=hall"]
    first_apply = calls.index("apply")
    # secrets: every Secret is created before the first apply
    assert max(i for i, c in enumerate(calls) if c == "create") < first_apply
    # report: status writes after the last apply or delete
    last_change = max(i for i, c in enumerate(calls) if c == "apply" or c.startswith("delete"))
    assert min(i for i, c in enumerate(calls) if c.startswith("patch_status")) > last_change
    # observe: the apply's answer has the Deployment's status; no second read of it
    assert "read_deployment" not in calls


async def test_a_steady_core_costs_reads_and_applies_but_no_writes_of_status() -> None:
    kube = FakeKube()
    _core_with_policy(kube)

    async with running(kube) as rec:
        await rec.reconcile(NS, "hall")
        _watch_sees(rec, kube, SECRET)
        kube.calls.clear()
        await rec.reconcile(NS, "hall")
        steady = list(kube.calls)
        assert not [c for c in steady if c.startswith(("patch_status", "event", "create"))]
        # The unwanted children (ServiceAccount, binding, HPA) were found absent once:
        # not read again until the child watch sees one of their names.
        for plural in ("serviceaccounts", "clusterrolebindings", "horizontalpodautoscalers"):
            assert f"read_metadata {plural}" not in steady

        kube.put(HPA, "hall-gateway", ownerReferences=_owned_by_core())
        rec.child_seen(HPA, NS, "hall-gateway")
        await rec.reconcile(NS, "hall")
        assert kube.get(HPA, "hall-gateway") is None
        assert ("HorizontalPodAutoscaler", "hall-gateway") in kube.deleted


async def test_resync_forgets_what_was_found_absent() -> None:
    kube = FakeKube()
    _core_with_policy(kube)

    async with running(kube) as rec:
        await rec.reconcile(NS, "hall")
        # Made behind the watch's back (no event): found again after a resync.
        kube.put(HPA, "hall-gateway", ownerReferences=_owned_by_core())
        await rec.reconcile(NS, "hall")
        assert kube.get(HPA, "hall-gateway") is not None
        await rec.resync()
        await rec.reconcile(NS, "hall")
        assert kube.get(HPA, "hall-gateway") is None


def test_drift_is_repaired_by_the_next_reconcile() -> None:
    kube = FakeKube()
    _core_with_policy(kube)
    reconcile(kube)
    wanted = copy.deepcopy(kube.get(DEPLOYMENT, "hall-gateway"))
    assert wanted is not None

    drifted = kube.get(DEPLOYMENT, "hall-gateway")
    assert drifted is not None
    drifted["spec"]["template"]["spec"]["containers"][0]["image"] = FOREIGN_IMAGE
    del kube.objects[("services", NS, "hall-gateway")]
    reconcile(kube)

    repaired = kube.get(DEPLOYMENT, "hall-gateway")
    assert repaired is not None
    assert repaired["spec"] == wanted["spec"]
    assert kube.get(SERVICE, "hall-gateway") is not None
    assert ready(kube)["status"] == "True"


def test_a_foreign_object_of_a_childs_name_holds_every_child() -> None:
    kube = FakeKube()
    _core_with_policy(kube)
    kube.put(SERVICE, "hall-gateway")  # a tenant's own Service
    reconcile(kube)
    assert kube.applied == []
    assert (ready(kube)["status"], ready(kube)["reason"]) == ("False", "NameConflict")
    assert kube.condition("accesspolicies", "lobby")["reason"] == "NotRendered"


def test_only_owned_children_the_spec_turned_off_are_deleted() -> None:
    kube = FakeKube()
    _core_with_policy(kube)
    kube.put(HPA, "hall-gateway", ownerReferences=_owned_by_core())
    kube.put(SERVICE_ACCOUNT, "hall-gateway")  # same name, not the core's
    owner = {"qsys.dev/owner": "av/hall"}
    kube.put(CLUSTER_ROLE_BINDING, BINDING, labels=dict(MANAGED), annotations=owner)
    reconcile(kube)
    assert sorted(kube.deleted) == [
        ("ClusterRoleBinding", BINDING),
        ("HorizontalPodAutoscaler", "hall-gateway"),
    ]
    assert kube.get(SERVICE_ACCOUNT, "hall-gateway") is not None


def test_an_image_not_allowed_applies_nothing_and_says_why() -> None:
    kube = FakeKube()
    _core_with_policy(kube)
    reconcile(kube)
    before = copy.deepcopy(kube.get(DEPLOYMENT, "hall-gateway"))
    core = kube.cores()[0]
    core["spec"]["gateway"] = {"image": FOREIGN_IMAGE}
    core["metadata"]["generation"] = 2
    kube.applied.clear()
    reconcile(kube)

    assert kube.applied == []
    assert kube.get(DEPLOYMENT, "hall-gateway") == before
    cond = ready(kube)
    assert (cond["status"], cond["reason"]) == ("False", "ImageNotAllowed")
    assert FOREIGN_IMAGE in cond["message"]
    assert kube.status("qsyscores", "hall")["observedGeneration"] == 2
    policy = kube.condition("accesspolicies", "lobby")
    assert (policy["status"], policy["reason"]) == ("False", "NotRendered")
    assert ("hall", "Warning", "ImageNotAllowed") in [e[:3] for e in kube.events]


def test_a_gateway_not_yet_available_is_reported_until_it_is() -> None:
    kube = FakeKube()
    kube.put_core()
    reconcile(kube)
    cond = ready(kube)
    assert cond["status"] == "False"
    assert cond["reason"] == "GatewayUnavailable"
    kube.deployments_available = True
    reconcile(kube)
    assert ready(kube)["status"] == "True"


def test_a_deleted_core_leaves_its_policies_unbound() -> None:
    kube = FakeKube()
    _core_with_policy(kube)
    reconcile(kube)
    del kube.objects[("qsyscores", NS, "hall")]
    kube.applied.clear()
    reconcile(kube)
    assert kube.applied == []
    policy = kube.condition("accesspolicies", "lobby")
    assert (policy["status"], policy["reason"]) == ("False", "CoreNotFound")
    assert kube.condition("accesspolicies", "lobby", "Bound")["status"] == "False"


def _rendered_subjects(kube: FakeKube) -> list[str]:
    secret = kube.get(SECRET, "hall-gateway-config")
    assert secret is not None
    config = yaml.safe_load(base64.b64decode(secret["data"][CONFIG_KEY]))
    return [s["name"] for s in config.get("subjects") or []]


def test_a_policy_being_deleted_is_gone_for_the_gateways_at_once() -> None:
    """Foreground deletion (Argo CD's prune): the policy stays, with a deletionTimestamp,
    until the garbage collector has taken its owner reference off the token Secret it
    shares with the core. Its subjects leave the config at once, and the operator does not
    put that reference back (which would hold the deletion up, for minutes as the
    collector backs off)."""
    kube = FakeKube()
    _core_with_policy(kube)
    kube.put_policy("ops")
    reconcile(kube)
    assert sorted(_rendered_subjects(kube)) == ["lobby-client", "ops-client"]
    policy = kube.objects[("accesspolicies", NS, "ops")]
    policy["metadata"] |= {
        "deletionTimestamp": "2024-01-01T00:01:00Z",
        "finalizers": ["foregroundDeletion"],
    }
    token = kube.objects[("secrets", NS, "ops-ops-client-token")]["metadata"]
    # The collector's part: the dependent keeps its other owner, the core.
    token["ownerReferences"] = [r for r in token["ownerReferences"] if r["uid"] != "ops-uid"]
    kube.patched.clear()
    reconcile(kube)
    assert _rendered_subjects(kube) == ["lobby-client"]
    assert kube.patched == []
    assert [r["uid"] for r in token["ownerReferences"]] == [CORE_UID]


async def test_watch_events_of_the_operators_own_writes_trigger_nothing() -> None:
    kube = FakeKube()
    _core_with_policy(kube)

    async with running(kube) as rec:
        triggered: list[tuple[str, str]] = []

        def record(namespace: str, core: str) -> None:
            triggered.append((namespace, core))

        rec.trigger = record  # type: ignore[method-assign]
        rec.policy_seen(NS, "lobby", "hall", "1")  # first seen: its core is triggered
        assert triggered == [(NS, "hall")]
        triggered.clear()
        await rec.reconcile(NS, "hall")
        core = kube.cores()[0]["metadata"]
        rec.core_seen(NS, "hall", core["resourceVersion"])  # its own status write
        service = kube.get(SERVICE, "hall-gateway")
        assert service is not None
        own = service["metadata"]
        assert not rec.child_seen(SERVICE, NS, "hall-gateway", own)  # its own apply
        policy = kube.objects[("accesspolicies", NS, "lobby")]["metadata"]
        rec.policy_seen(NS, "lobby", "hall", policy["resourceVersion"])
        assert triggered == []

        rec.core_seen(NS, "hall", "someone-elses-edit")
        edited = own | {"resourceVersion": "999"}
        assert rec.child_seen(SERVICE, NS, "hall-gateway", edited)
        rec.policy_seen(NS, "lobby", "hall", "another-edit")
        assert triggered == [(NS, "hall"), (NS, "hall")]
        assert rec.child_seen(SERVICE, NS, "hall-gateway", edited, deleted=True)


async def test_every_wanted_child_is_read_before_its_apply_whatever_the_watch_saw() -> None:
    """A watch lags a delete and a re-create of the name: the ownership check reads."""
    kube = FakeKube()
    _core_with_policy(kube)

    async with running(kube) as rec:
        await rec.reconcile(NS, "hall")
        service = kube.get(SERVICE, "hall-gateway")
        assert service is not None
        rec.child_seen(SERVICE, NS, "hall-gateway", service["metadata"])
        kube.calls.clear()
        await rec.reconcile(NS, "hall")
        assert "read_metadata services" in kube.calls

        # Replaced by a foreign object before the watch tells of the delete.
        del kube.objects[("services", NS, "hall-gateway")]
        kube.put(SERVICE, "hall-gateway")
        kube.applied.clear()
        await rec.reconcile(NS, "hall")
        assert kube.applied == []
        assert ready(kube)["reason"] == "NameConflict"


async def test_policies_are_listed_by_their_core_or_all_when_the_selector_is_refused() -> None:
    """A reconcile lists only its core's policies (the CRD's selectable field); an API server
    that refuses the selector (an older CRD) gets one namespace-wide list, filtered here,
    and is not asked to select again."""
    kube = FakeKube()
    _core_with_policy(kube)
    kube.put_core("stage", uid="stage-uid")
    kube.put_policy("backstage", core="stage")

    async with running(kube) as rec:
        await rec.reconcile(NS, "hall")
        assert "list_custom accesspolicies spec.coreRef.name=hall" in kube.calls
        assert kube.condition("accesspolicies", "lobby")["status"] == "True"
        assert "status" not in kube.objects[("accesspolicies", NS, "backstage")]

    kube.selectable_fields = False
    async with running(kube) as rec:
        kube.calls.clear()
        await rec.reconcile(NS, "stage")
        await rec.reconcile(NS, "hall")
        lists = [c for c in kube.calls if c.startswith("list_custom accesspolicies")]
        assert lists == [
            "list_custom accesspolicies spec.coreRef.name=stage",
            "list_custom accesspolicies",
            "list_custom accesspolicies",
        ]
        assert kube.condition("accesspolicies", "backstage")["status"] == "True"
        assert kube.condition("accesspolicies", "lobby")["status"] == "True"


async def test_a_deployment_whose_status_alone_changed_is_not_applied_again() -> None:
    """The Deployment controller's status updates are new versions but no change of what
    the operator applied (same generation, its labels in place): no apply, and the replicas
    come from the watch. A spec change (a new generation) or a label of the operator's
    removed is applied again."""
    kube = FakeKube()
    _core_with_policy(kube)
    key = ("deployments", NS, "hall-gateway")

    async with running(kube) as rec:
        await rec.reconcile(NS, "hall")
        _watch_sees(rec, kube)
        dep = kube.objects[key]
        dep["metadata"] |= {"resourceVersion": "500"}
        dep["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "1"}
        dep["status"] = {"replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}
        assert rec.child_seen(DEPLOYMENT, NS, "hall-gateway", dep["metadata"], body=dep)
        kube.applied.clear()
        kube.calls.clear()
        await rec.reconcile(NS, "hall")
        assert ("Deployment", "hall-gateway") not in kube.applied
        assert "read_deployment" not in kube.calls
        gateway = kube.condition("qsyscores", "hall", "GatewayAvailable")
        assert gateway["message"].startswith("1/2")

        dep["spec"]["replicas"] = 5  # drift: the API server makes a new generation
        dep["metadata"] |= {"resourceVersion": "501", "generation": 2}
        rec.child_seen(DEPLOYMENT, NS, "hall-gateway", dep["metadata"], body=dep)
        await rec.reconcile(NS, "hall")
        assert ("Deployment", "hall-gateway") in kube.applied
        assert kube.objects[key]["spec"]["replicas"] == 2

        _watch_sees(rec, kube, DEPLOYMENT)
        dep = kube.objects[key]
        dep["metadata"]["labels"] = {}
        dep["metadata"]["resourceVersion"] = "502"
        rec.child_seen(DEPLOYMENT, NS, "hall-gateway", dep["metadata"], body=dep)
        kube.applied.clear()
        await rec.reconcile(NS, "hall")
        assert kube.applied == [("Deployment", "hall-gateway")]


async def test_secrets_the_watch_saw_unchanged_are_not_read_again() -> None:
    """The token key, token and config Secrets are read (or created) once; while the child
    watch's latest version of each is the one read, the next reconcile reads none of them.
    A newer version (anyone's change), a delete, or a Secret the watch has not seen is read."""
    kube = FakeKube()
    _core_with_policy(kube)

    async with running(kube) as rec:
        await rec.reconcile(NS, "hall")
        # Read: the operator's proof key and the config (not applied yet). The token key
        # and the token, unseen by the watch, are created without a read first.
        assert kube.calls.count("read_secret") == 2
        assert ("Secret", "hall-gateway-token-key") in kube.created
        assert ("Secret", "lobby-lobby-client-token") in kube.created
        kube.calls.clear()
        await rec.reconcile(NS, "hall")  # the watch has seen nothing yet: 409, then read
        assert kube.calls.count("create") == 2
        assert kube.calls.count("read_secret") == 3
        _watch_sees(rec, kube, SECRET)
        kube.calls.clear()
        await rec.reconcile(NS, "hall")
        assert kube.calls.count("read_secret") == 0
        assert ready(kube)["status"] == "True"

        # Someone rewrites the token Secret: a newer version, read again and refused.
        token = kube.objects[("secrets", NS, "lobby-lobby-client-token")]
        token["metadata"] |= {"resourceVersion": "900", "ownerReferences": []}
        token["metadata"]["annotations"] = {}
        rec.child_seen(SECRET, NS, "lobby-lobby-client-token", token["metadata"])
        kube.calls.clear()
        await rec.reconcile(NS, "hall")
        assert kube.calls.count("read_secret") == 1
        policy_ready = kube.condition("accesspolicies", "lobby")
        assert (policy_ready["status"], policy_ready["reason"]) == ("False", "TokenProblem")

        # The token key deleted: the watch's delete makes the next reconcile read it.
        del kube.objects[("secrets", NS, "hall-gateway-token-key")]
        rec.child_seen(SECRET, NS, "hall-gateway-token-key", None, deleted=True)
        kube.calls.clear()
        kube.created.clear()
        await rec.reconcile(NS, "hall")
        assert ("Secret", "hall-gateway-token-key") in kube.created


async def test_children_unchanged_since_the_operators_own_apply_are_not_applied_again() -> None:
    kube = FakeKube()
    _core_with_policy(kube)

    def watch_sees_everything(rec: Reconciler) -> None:
        for (plural, ns, name), obj in list(kube.objects.items()):
            kind = next((k for k in CHILDREN if k.plural == plural), None)
            if kind is not None:
                rec.child_seen(kind, ns, name, obj["metadata"])

    async with running(kube) as rec:
        await rec.reconcile(NS, "hall")
        watch_sees_everything(rec)
        kube.applied.clear()
        await rec.reconcile(NS, "hall")
        assert kube.applied == []
        assert "read_deployment" in kube.calls  # replicas still read once

        # Drift: a newer version than the operator's own apply is applied again.
        service = kube.get(SERVICE, "hall-gateway")
        assert service is not None
        service["spec"]["type"] = "NodePort"
        service["metadata"]["resourceVersion"] = "drifted"
        rec.child_seen(SERVICE, NS, "hall-gateway", service["metadata"])
        await rec.reconcile(NS, "hall")
        assert kube.applied == [("Service", "hall-gateway")]
        repaired = kube.get(SERVICE, "hall-gateway")
        assert repaired is not None
        assert repaired["spec"].get("type") != "NodePort"

        # A changed spec renders another manifest: applied whatever the watch saw.
        watch_sees_everything(rec)
        kube.applied.clear()
        kube.cores()[0]["spec"]["gateway"] = {"replicas": 3}
        await rec.reconcile(NS, "hall")
        assert ("Deployment", "hall-gateway") in kube.applied


async def test_resync_skips_cores_reconciled_within_half_a_period() -> None:
    kube = FakeKube()
    _core_with_policy(kube)
    kube.put_core("stage", uid="stage-uid")
    async with running(kube, resync_seconds=600) as rec:
        triggered: list[tuple[str, str]] = []

        def record(namespace: str, core: str) -> None:
            triggered.append((namespace, core))

        await rec._reconcile_key((NS, "hall"))
        rec.trigger = record  # type: ignore[method-assign]
        await rec.resync()
        assert triggered == [(NS, "stage")]  # hall was reconciled a moment ago
    async with running(kube, resync_seconds=0.001) as rec:
        await rec._reconcile_key((NS, "hall"))
        await asyncio.sleep(0.01)
        triggered.clear()
        rec.trigger = record  # type: ignore[method-assign]
        await rec.resync()
        assert triggered == [(NS, "hall"), (NS, "stage")]


async def test_resync_waits_while_more_reconciles_are_pending_than_run_at_once() -> None:
    kube = FakeKube()
    _core_with_policy(kube)
    async with running(kube) as rec:
        await rec.reconcile(NS, "hall")
        gate = asyncio.Event()

        async def blocked(key: tuple[str, str]) -> None:
            await gate.wait()

        rec.queue._work = blocked
        for i in range(MAX_CONCURRENT_RECONCILES + 1):
            rec.trigger(NS, f"busy-{i}")
        await asyncio.sleep(0)
        kube.calls.clear()
        await rec.resync()
        assert kube.calls == []  # not even listed
        gate.set()
        await asyncio.sleep(0.01)
        assert rec.queue.busy == 0
        kube.calls.clear()
        rec.queue._work = rec._reconcile_key
        await rec.resync()
        await asyncio.sleep(0.05)
        assert "list_custom qsyscores" in kube.calls
