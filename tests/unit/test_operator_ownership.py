"""The operator touches only its own children: the pure ownership rules (ownership.py),
and the reconciler's decisions against an in-memory API (FakeKube): a foreign object of a
child's name is never applied to, patched or deleted, the core says NameConflict, and
nothing of the core is applied meanwhile. Also the per-namespace core limit.

The fake API is tests/unit/fake_kube.py; the real API server's side (preconditions,
byte-identical platform objects, pods) is in tests/e2e/test_tenant.py."""

from __future__ import annotations

import asyncio
import base64
import copy
from typing import Any

import pytest
import yaml
from fake_kube import CORE_UID, MANAGED, NS, FakeKube, ready, reconcile, running

from qsys_operator.derive import (
    CoreFindings,
    Replicas,
    core_limit_problem,
    core_status,
    limited_core_status,
)
from qsys_operator.kinds import (
    CHILDREN,
    CLUSTER_ROLE_BINDING,
    DEPLOYMENT,
    NETWORK_POLICY,
    PDB,
    SECRET,
    SERVICE,
    SERVICE_ACCOUNT,
    Kind,
)
from qsys_operator.ownership import NameConflict, Owner, conflicts_message, owns
from qsys_operator.status import Cond

BINDING = "qsys-gateway-tokenreview:av:hall"
OWNER = Owner(NS, "hall", CORE_UID)


def _ref(uid: str, controller: bool | None = True) -> dict[str, Any]:
    return {"apiVersion": "qsys.dev/v1alpha1", "kind": "QSysCore", "name": "hall", "uid": uid} | (
        {} if controller is None else {"controller": controller}
    )


# ---- the rules -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in CHILDREN if k.namespaced])
def test_a_namespaced_child_is_the_cores_only_with_its_controller_reference(kind: Kind) -> None:
    assert owns(OWNER, kind, {"ownerReferences": [_ref(CORE_UID)]})
    assert owns(OWNER, kind, {"ownerReferences": [_ref("other"), _ref(CORE_UID)]})
    for refs in (
        [],
        [_ref("other-uid")],  # another core, or this name's previous core
        [_ref(CORE_UID, controller=False)],  # a plain owner reference is not control
        [_ref(CORE_UID, controller=None)],
    ):
        assert not owns(OWNER, kind, {"ownerReferences": refs})
    # Labels prove nothing on a namespaced object: anyone who may create it sets them.
    assert not owns(OWNER, kind, {"labels": MANAGED})
    assert not owns(Owner(NS, "hall", None), kind, {"ownerReferences": [_ref(CORE_UID)]})


def test_the_cluster_scoped_binding_is_the_cores_by_label_and_owner_annotation() -> None:
    crb = CLUSTER_ROLE_BINDING
    mine = {"labels": MANAGED, "annotations": {"qsys.dev/owner": "av/hall"}}
    assert owns(OWNER, crb, mine)
    assert owns(Owner(NS, "hall", None), crb, mine)  # the core is gone: still its binding
    assert not owns(OWNER, crb, {"labels": MANAGED})
    assert not owns(OWNER, crb, {"annotations": {"qsys.dev/owner": "av/hall"}})
    assert not owns(OWNER, crb, mine | {"annotations": {"qsys.dev/owner": "av/lobby"}})
    assert not owns(OWNER, crb, mine | {"annotations": {"qsys.dev/owner": "other/hall"}})
    assert not owns(OWNER, crb, {"ownerReferences": [_ref(CORE_UID)]})


def test_the_conflict_message_names_kind_and_name_and_nothing_else() -> None:
    one = conflicts_message([NameConflict(SERVICE_ACCOUNT, "hall-gateway")])
    assert one.startswith("ServiceAccount hall-gateway already exists and was not created")
    two = conflicts_message(
        [NameConflict(SERVICE, "hall-gateway"), NameConflict(DEPLOYMENT, "hall-gateway")]
    )
    assert two.startswith("Deployment hall-gateway, Service hall-gateway already exist and were")


def test_core_limit_keeps_the_oldest_cores() -> None:
    cores = [
        ("2024-01-03T00:00:00Z", "c"),
        ("2024-01-01T00:00:00Z", "b"),
        ("2024-01-01T00:00:00Z", "a"),
        ("2024-01-02T00:00:00Z", "d"),
    ]
    assert core_limit_problem("a", NS, cores, 2) is None
    assert core_limit_problem("b", NS, cores, 2) is None
    problem = core_limit_problem("d", NS, cores, 2)
    assert problem is not None
    assert "namespace av has 4 QSysCores" in problem
    assert "at most 2 per namespace" in problem
    assert core_limit_problem("c", NS, cores, 3) is not None
    assert core_limit_problem("c", NS, cores, 4) is None
    update = limited_core_status(3, {}, problem, "2024-01-05T00:00:00Z")
    assert update.status is not None
    assert update.status["observedGeneration"] == 3
    ready, stalled = update.status["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", "CoreLimitExceeded")
    assert (stalled["type"], stalled["status"]) == ("Stalled", "True")
    assert update.events
    assert update.events[0][1] == "CoreLimitExceeded"
    again = limited_core_status(3, update.status, problem, "2024-01-06T00:00:00Z")
    assert again.status is None
    assert again.events == []


# ---- the reconciler against an in-memory API ------------------------------------------


def sa_policy(kube: FakeKube) -> None:
    kube.objects[("accesspolicies", NS, "jobs")] = {
        "apiVersion": "qsys.dev/v1alpha1",
        "kind": "AccessPolicy",
        "metadata": {
            "name": "jobs",
            "namespace": NS,
            "uid": "jobs-uid",
            "generation": 1,
            "creationTimestamp": "2024-01-01T00:00:00Z",
        },
        "spec": {
            "coreRef": {"name": "hall"},
            "subjects": [{"name": "runner", "serviceAccount": {"name": "runner"}}],
            "rules": [{"methods": ["StatusGet"]}],
        },
    }


def test_a_core_without_foreign_objects_applies_its_children() -> None:
    kube = FakeKube()
    kube.put_core()
    sa_policy(kube)
    reconcile(kube)
    applied = {k for k, _ in kube.applied}
    assert {"ServiceAccount", "ClusterRoleBinding", "Deployment", "Service", "Secret"} <= applied
    crb = kube.get(CLUSTER_ROLE_BINDING, BINDING)
    assert crb is not None
    assert crb["metadata"]["annotations"] == {"qsys.dev/owner": "av/hall"}
    # A second reconcile finds only its own children: no conflict, the same applies.
    kube.applied.clear()
    reconcile(kube)
    assert {k for k, _ in kube.applied} == applied
    assert ready(kube)["reason"] != "NameConflict"


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (k, {CLUSTER_ROLE_BINDING: BINDING, SECRET: "hall-gateway-config"}.get(k, "hall-gateway"))
        for k in CHILDREN
    ],
    ids=lambda v: v.kind if isinstance(v, Kind) else v,
)
def test_a_foreign_object_of_a_childs_name_stops_everything(kind: Kind, name: str) -> None:
    kube = FakeKube()
    kube.sm_served = True
    kube.put_core(gateway={"autoscaling": {}}, monitoring={"serviceMonitor": {"enabled": True}})
    sa_policy(kube)
    # Labelled like a child, even owned by the core but not as controller: still foreign.
    foreign = kube.put(
        kind, name, labels=dict(MANAGED), ownerReferences=[_ref(CORE_UID, controller=False)]
    )
    before = copy.deepcopy(foreign)
    reconcile(kube)
    assert kube.applied == []
    assert kube.deleted == []
    assert kube.get(kind, name) == before
    cond = ready(kube)
    assert (cond["status"], cond["reason"]) == ("False", "NameConflict")
    assert f"{kind.kind} {name} already exists" in cond["message"]
    policy_status = kube.objects[("accesspolicies", NS, "jobs")]["status"]
    policy_ready = next(c for c in policy_status["conditions"] if c["type"] == "Ready")
    assert policy_ready["reason"] == "NotRendered"
    assert f"{kind.kind} {name}" in policy_ready["message"]

    # Removed by its owner: the core gets its child on the next reconcile.
    del kube.objects[(kind.plural, NS if kind.namespaced else None, name)]
    reconcile(kube)
    assert (kind.kind, name) in kube.applied
    assert ready(kube)["reason"] != "NameConflict"


def test_unwanted_children_are_deleted_only_when_they_are_the_cores() -> None:
    kube = FakeKube()
    kube.put_core(gateway={"replicas": 1})  # no PDB; no ServiceAccount subject: no identity
    own_pdb = kube.put(PDB, "hall-gateway", ownerReferences=[_ref(CORE_UID)])
    kube.put(NETWORK_POLICY, "hall-gateway", labels=dict(MANAGED))
    kube.put(SERVICE_ACCOUNT, "hall-gateway", ownerReferences=[_ref("previous-core")])
    kube.put(CLUSTER_ROLE_BINDING, BINDING, labels=dict(MANAGED))
    reconcile(kube, name="hall")
    # A NetworkPolicy is wanted (default on): the foreign one is a conflict, so nothing,
    # not even the core's own PDB, is touched.
    assert ready(kube)["reason"] == "NameConflict"
    assert kube.deleted == []
    assert kube.applied == []
    assert kube.get(PDB, "hall-gateway") == own_pdb

    del kube.objects[("networkpolicies", NS, "hall-gateway")]
    reconcile(kube)
    assert kube.deleted == [("PodDisruptionBudget", "hall-gateway")]
    assert kube.get(SERVICE_ACCOUNT, "hall-gateway") is not None  # not the core's
    assert kube.get(CLUSTER_ROLE_BINDING, BINDING) is not None  # no owner annotation


def test_a_deleted_core_removes_only_its_own_binding() -> None:
    kube = FakeKube()
    kube.put(CLUSTER_ROLE_BINDING, BINDING, labels=dict(MANAGED))  # a platform's, same name
    reconcile(kube)
    assert kube.deleted == []
    assert kube.get(CLUSTER_ROLE_BINDING, BINDING) is not None
    kube.put(
        CLUSTER_ROLE_BINDING,
        BINDING,
        labels=dict(MANAGED),
        annotations={"qsys.dev/owner": "av/hall"},
    )
    reconcile(kube)
    assert kube.deleted == [("ClusterRoleBinding", BINDING)]


def test_a_foreign_config_secret_is_neither_read_into_the_config_nor_written() -> None:
    kube = FakeKube()
    kube.put_core()
    foreign = {
        "subjects": [
            {
                "name": "ghost",
                "tokenHmacSha256": "a" * 64,
                "rules": [{"methods": ["StatusGet"]}],
            }
        ]
    }
    secret = kube.put(SECRET, "hall-gateway-config")
    secret["data"] = {"gateway.yaml": base64.b64encode(yaml.safe_dump(foreign).encode()).decode()}
    before = copy.deepcopy(secret)
    reconcile(kube)
    assert kube.get(SECRET, "hall-gateway-config") == before
    assert "Secret hall-gateway-config already exists" in ready(kube)["message"]
    assert kube.applied == []


def test_the_core_limit_renders_only_the_oldest_cores() -> None:
    kube = FakeKube()
    for name in ("a", "b", "c"):
        kube.put_core(name, uid=f"{name}-uid")
    for name in ("a", "b", "c"):
        reconcile(kube, name=name, max_cores_per_namespace=2)
    assert ready(kube, "c")["reason"] == "CoreLimitExceeded"
    assert kube.objects[("qsyscores", NS, "c")]["status"]["observedGeneration"] == 1
    made = {n for _, n in kube.applied} | {n for _, n in kube.created}
    assert "a-gateway" in made
    assert "b-gateway" in made
    assert not [n for n in made if n.startswith("c-")]  # not even its token key
    kube.applied.clear()
    reconcile(kube, name="c")  # no limit
    assert ("Deployment", "c-gateway") in kube.applied


def test_a_quota_that_refuses_the_token_key_is_reported_not_retried() -> None:
    kube = FakeKube()
    kube.put_core()
    kube.quota_exceeded = True
    reconcile(kube)  # returns: a permanent refusal is not raised for a retry
    cond = ready(kube)
    assert (cond["status"], cond["reason"]) == ("False", "SecretNotAccepted")
    assert "hall-gateway-token-key could not be created" in cond["message"]
    assert "exceeded quota" in cond["message"]
    assert kube.applied == []


def test_a_conflict_is_announced_by_an_event_also_when_ready_was_false_already() -> None:
    found = CoreFindings(
        gateway_name="hall-gateway",
        replicas=Replicas(None),
        connected=Cond("CoreConnected", "Unknown", "ProbeDisabled"),
        name_conflict="Service hall-gateway already exists",
    )
    first = core_status(1, 2, {}, found, "t0")
    assert [e[1] for e in first.events].count("NameConflict") == 1
    assert first.status is not None
    again = core_status(1, 2, first.status, found, "t1")
    assert again.events == []
    was_false = {
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "GatewayUnavailable",
                "message": "",
                "lastTransitionTime": "t",
            }
        ]
    }
    later = core_status(2, 2, was_false, found, "t2")
    assert [e for e in later.events if e[1] == "NameConflict"] == [
        (
            "Warning",
            "NameConflict",
            "Ready is False (NameConflict): Service hall-gateway already exists",
        )
    ]


def test_a_core_being_deleted_gets_no_children_applied() -> None:
    """Foreground deletion (Argo CD's cascade) keeps the core until its children are gone:
    re-applying them meanwhile would keep it forever."""
    kube = FakeKube()
    kube.put_core()
    kube.objects[("qsyscores", NS, "hall")]["metadata"] |= {
        "deletionTimestamp": "2024-01-02T00:00:00Z",
        "finalizers": ["foregroundDeletion"],
    }
    reconcile(kube)
    assert kube.applied == []
    assert kube.created == []


def test_a_crd_answer_read_across_a_crd_change_is_not_kept() -> None:
    """The ServiceMonitor CRD created and Established while a reconcile reads it: the
    reconcile the change triggered reads it again (a kept "not served" left the core
    without its ServiceMonitor until the next resync)."""

    class SlowCrdKube(FakeKube):
        def __init__(self) -> None:
            super().__init__()
            self.reading = asyncio.Event()
            self.release = asyncio.Event()
            self.reads = 0

        async def crd_served(self, name: str, version: str) -> bool:
            self.reads += 1
            served = self.sm_served
            self.reading.set()
            await self.release.wait()
            return served

    async def main() -> None:
        kube = SlowCrdKube()
        async with running(kube) as rec:
            first = asyncio.create_task(rec._service_monitor_served())
            await kube.reading.wait()
            kube.sm_served = True
            rec.service_monitor_crd_changed()
            kube.release.set()
            assert await first is False
            assert await rec._service_monitor_served() is True
            assert kube.reads == 2  # read again once, then kept

    asyncio.run(main())
