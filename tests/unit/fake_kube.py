"""An in-memory Kubernetes for the reconciler's unit tests: the `Kube` calls the reconciler
makes (operator/qsys_operator/k8s.py), on plain dicts, with every call recorded.

Modelled on the fake clients of controller unit tests (cert-manager's): objects live in
a dict keyed like the API (plural, namespace, name); applies, creates, deletes and status
patches change it the way the API server would (UIDs, resourceVersions, the delete
preconditions); a Deployment's status follows its replicas when `deployments_available`
is set (the controller-manager's and kubelet's part). Real API behaviour is tested
against the local control plane in tests/e2e."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
from collections.abc import AsyncIterator
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from unit_support import secret_of

from qsys_operator.kinds import SECRET, Kind, kind_of
from qsys_operator.metrics import OperatorMetrics
from qsys_operator.reconcile import Reconciler
from qsys_operator.render import Manifest
from qsys_operator.settings import OperatorSettings

NS = "av"
CORE_UID = "core-uid"
MANAGED = {"app.kubernetes.io/managed-by": "qsys-operator"}

ObjectKey = tuple[str, str | None, str]


class FakeKube:
    """The Kube calls the reconciler makes, on dicts; records every call and write."""

    def __init__(self) -> None:
        self.objects: dict[ObjectKey, dict[str, Any]] = {}
        self.calls: list[str] = []
        """Every call, as its method name (read_metadata also names the kind)."""
        self.applied: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, str]] = []
        self.created: list[tuple[str, str]] = []
        self.patched: list[str] = []
        """The Secrets whose metadata patch_secret_metadata changed."""
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str, str]] = []
        """(object name, type, reason, message) of every Event posted."""
        self._uids = itertools.count(1)
        self._versions = itertools.count(2)
        self.sm_served = False
        self.quota_exceeded = False
        self.deployments_available = False
        self.selectable_fields = True

    # setup and inspection
    def put(self, kind: Kind, name: str, **meta: Any) -> dict[str, Any]:
        ns = NS if kind.namespaced else None
        obj = {
            "apiVersion": kind.api_version,
            "kind": kind.kind,
            "metadata": {
                "name": name,
                "uid": f"uid-{next(self._uids)}",
                "resourceVersion": "1",
                "creationTimestamp": "2024-01-01T00:00:00Z",
            }
            | ({"namespace": ns} if ns else {})
            | meta,
        }
        self.objects[(kind.plural, ns, name)] = obj
        return obj

    def get(self, kind: Kind, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind.plural, NS if kind.namespaced else None, name))

    def put_core(self, name: str = "hall", uid: str = CORE_UID, **spec: Any) -> None:
        self.objects[("qsyscores", NS, name)] = {
            "apiVersion": "qsys.dev/v1alpha1",
            "kind": "QSysCore",
            "metadata": {
                "name": name,
                "namespace": NS,
                "uid": uid,
                "generation": 1,
                "creationTimestamp": f"2024-01-01T00:00:0{len(self.cores())}Z",
            },
            "spec": {"core": {"host": "192.0.2.10"}} | spec,
        }

    def put_policy(self, name: str, core: str = "hall", **subject: Any) -> None:
        """An AccessPolicy of one subject `name`-client (a generated token by default)."""
        self.objects[("accesspolicies", NS, name)] = {
            "apiVersion": "qsys.dev/v1alpha1",
            "kind": "AccessPolicy",
            "metadata": {
                "name": name,
                "namespace": NS,
                "uid": f"{name}-uid",
                "generation": 1,
                "creationTimestamp": "2024-01-01T00:00:00Z",
            },
            "spec": {
                "coreRef": {"name": core},
                "subjects": [{"name": f"{name}-client"} | subject],
                "rules": [{"methods": ["StatusGet"]}],
            },
        }

    def cores(self) -> list[dict[str, Any]]:
        return [o for (p, _, _), o in self.objects.items() if p == "qsyscores"]

    def status(self, plural: str, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.objects[(plural, NS, name)].get("status") or {}
        return status

    def condition(self, plural: str, name: str, type_: str = "Ready") -> dict[str, Any]:
        conditions = self.status(plural, name).get("conditions") or []
        found: dict[str, Any] = next(c for c in conditions if c["type"] == type_)
        return found

    def writes(self) -> list[str]:
        """The calls that change something, in order."""
        reads = ("get_", "list_", "read_", "crd_served", "api_server_endpoints")
        return [c for c in self.calls if not c.startswith(reads)]

    def _version(self) -> str:
        return str(next(self._versions))

    # the Kube interface
    async def get_core(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("get_core")
        return copy.deepcopy(self.objects.get(("qsyscores", namespace, name)))

    async def get_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("get_policy")
        return copy.deepcopy(self.objects.get(("accesspolicies", namespace, name)))

    async def list_custom(
        self, plural: str, namespace: str | None, field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """field_selector: only spec.coreRef.name=NAME of accesspolicies, as the CRD declares;
        refused (400) when `selectable_fields` is off, as an API server with an older CRD."""
        selected = f" {field_selector}" if field_selector else ""
        self.calls.append(f"list_custom {plural}{selected}")
        core = None
        if field_selector:
            field, _, core = field_selector.partition("=")
            if not self.selectable_fields or (plural, field) != (
                "accesspolicies",
                "spec.coreRef.name",
            ):
                raise ApiException(status=400, reason="Bad Request")
        return [
            copy.deepcopy(o)
            for (p, n, _), o in self.objects.items()
            if p == plural
            and namespace in (None, n)
            and (core is None or o["spec"]["coreRef"]["name"] == core)
        ]

    async def read_metadata(
        self, kind: Kind, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        self.calls.append(f"read_metadata {kind.plural}")
        obj = self.objects.get((kind.plural, namespace if kind.namespaced else None, name))
        return copy.deepcopy(obj["metadata"]) if obj else None

    async def read_secret_metadata(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.read_metadata(SECRET, namespace, name)

    def unseen(self, namespace: str, name: str) -> bool:
        return False

    async def read_secret(self, namespace: str, name: str) -> client.V1Secret | None:
        self.calls.append("read_secret")
        obj = self.objects.get(("secrets", namespace, name))
        return None if obj is None else secret_of(obj, namespace)

    async def patch_secret_metadata(
        self,
        namespace: str,
        name: str,
        resource_version: str | None,
        owner_references: list[dict[str, Any]],
        annotations: dict[str, str],
    ) -> None:
        self.calls.append("patch_secret_metadata")
        meta = self.objects[("secrets", namespace, name)]["metadata"]
        if meta.get("resourceVersion") != resource_version:
            raise ApiException(status=422, reason="Unprocessable Entity")
        meta["ownerReferences"] = copy.deepcopy(owner_references)
        meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
        meta["resourceVersion"] = self._version()
        self.patched.append(name)

    async def create(self, manifest: Manifest) -> client.V1Secret | None:
        self.calls.append("create")
        namespace = manifest["metadata"].get("namespace", NS)
        if self.quota_exceeded and namespace == NS:
            body = '{"message": "secrets \\"x\\" is forbidden: exceeded quota: q"}'
            raise ApiException(status=403, reason="Forbidden", body=body)
        key = ("secrets", namespace, manifest["metadata"]["name"])
        if key in self.objects:
            return None
        self.created.append(("Secret", manifest["metadata"]["name"]))
        obj = copy.deepcopy(manifest)
        obj["metadata"] |= {"uid": f"uid-{next(self._uids)}", "resourceVersion": "1"}
        self.objects[key] = obj
        return secret_of(obj, namespace)

    async def apply(self, manifest: Manifest) -> dict[str, Any]:
        """Server-side apply with force, as the operator's only field manager: the stored
        object becomes the manifest (fields others set are not modelled)."""
        self.calls.append("apply")
        kind = kind_of(manifest["apiVersion"], manifest["kind"])
        name = manifest["metadata"]["name"]
        self.applied.append((kind.kind, name))
        key = (kind.plural, NS if kind.namespaced else None, name)
        old = self.objects.get(key)
        obj = copy.deepcopy(manifest)
        uid = old["metadata"]["uid"] if old else f"uid-{next(self._uids)}"
        generation = 1
        if old is not None:
            same = old.get("spec") == obj.get("spec")
            generation = old["metadata"].get("generation", 1) + (0 if same else 1)
        obj["metadata"] |= {
            "uid": uid,
            "resourceVersion": self._version(),
            "generation": generation,
        }
        if kind.kind == "Deployment":
            replicas = obj["spec"].get("replicas", 1)
            up = replicas if self.deployments_available else 0
            obj["status"] = {"replicas": replicas, "availableReplicas": up, "readyReplicas": up}
        self.objects[key] = obj
        return copy.deepcopy(obj)

    async def delete(self, kind: Kind, live: dict[str, Any]) -> bool:
        self.calls.append(f"delete {kind.plural}")
        key = (kind.plural, live.get("namespace"), live["name"])
        obj = self.objects.get(key)
        if obj is None:
            return False
        meta = obj["metadata"]
        if (meta["uid"], meta["resourceVersion"]) != (live["uid"], live["resourceVersion"]):
            raise ApiException(status=409, reason="Conflict")
        self.deleted.append((kind.kind, live["name"]))
        del self.objects[key]
        return True

    async def read_deployment(self, namespace: str, name: str) -> client.V1Deployment | None:
        self.calls.append("read_deployment")
        obj = self.objects.get(("deployments", namespace, name))
        if obj is None:
            return None
        status = obj.get("status") or {}
        selector = client.V1LabelSelector(match_labels={})
        template = client.V1PodTemplateSpec()
        return client.V1Deployment(
            spec=client.V1DeploymentSpec(selector=selector, template=template),
            status=client.V1DeploymentStatus(
                available_replicas=status.get("availableReplicas"),
                ready_replicas=status.get("readyReplicas"),
            ),
        )

    async def list_pods(self, namespace: str, selector: str) -> list[client.V1Pod]:
        self.calls.append("list_pods")
        return []

    async def crd_served(self, name: str, version: str) -> bool:
        self.calls.append("crd_served")
        return self.sm_served

    async def api_server_endpoints(self) -> list[tuple[str, int]]:
        self.calls.append("api_server_endpoints")
        return [("198.18.0.1", 6443)]

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> str | None:
        self.calls.append(f"patch_status {plural}")
        self.statuses.append({"name": name} | status)
        obj = self.objects.get((plural, namespace, name))
        if obj is None:
            return None
        obj["status"] = status
        version = self._version()
        obj["metadata"]["resourceVersion"] = version
        return version

    async def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.calls.append("event")
        self.events.append((obj["metadata"]["name"], type_, reason, message))


class FakePeering:
    async def active(self) -> bool:
        return True


def reconciler(kube: FakeKube, **settings: Any) -> Reconciler:
    """A Reconciler on `kube`, the gateway probe off unless settings say otherwise."""
    return Reconciler(
        kube,  # type: ignore[arg-type]
        OperatorSettings(**({"gateway_probe": False} | settings)),
        OperatorMetrics(),
        FakePeering(),  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def running(kube: FakeKube, **settings: Any) -> AsyncIterator[Reconciler]:
    """A Reconciler on `kube` for the body of the block, closed afterwards."""
    rec = reconciler(kube, **settings)
    try:
        yield rec
    finally:
        await rec.close()


def reconcile(kube: FakeKube, name: str = "hall", **settings: Any) -> None:
    """One reconcile of core `name` by a fresh Reconciler."""

    async def main() -> None:
        async with running(kube, **settings) as rec:
            await rec.reconcile(NS, name)

    asyncio.run(main())


def ready(kube: FakeKube, name: str = "hall") -> dict[str, Any]:
    return kube.condition("qsyscores", name)
