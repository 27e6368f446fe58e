"""Kubernetes API access: server-side apply and the few reads and writes the operator makes.

The official client is synchronous; every call runs in a worker thread so the
Kopf event loop never blocks.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .api import GROUP, VERSION, AccessPolicy, QSysCore
from .kinds import ENDPOINT_SLICE, SECRET, Kind, kind_of
from .render import Manifest

FIELD_MANAGER = "qsys-operator"
HANDOVER_MANAGER = "qsys-operator-replicas-handover"
"""Holds a Deployment's replicas for a moment when autoscaling takes them over."""
JSON = "application/json"
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
"""Accept header of a metadata-only read: the API server never sends the object's data."""
API_THREADS = 24
"""Worker threads (and pooled connections) for the blocking client: one per reconcile in
flight (reconcile.MAX_CONCURRENT_RECONCILES), few enough to stay small."""


def object_path(kind: Kind, namespace: str | None, name: str) -> str:
    """The object's URL path; namespace is ignored for a cluster-scoped kind."""
    if not kind.namespaced:
        return f"{kind.path_prefix}/{kind.plural}/{name}"
    return f"{kind.path_prefix}/namespaces/{namespace}/{kind.plural}/{name}"


def applies_replicas(live: dict[str, Any], manager: str = FIELD_MANAGER) -> bool:
    """Whether `manager` holds spec.replicas of a live object through server-side apply."""
    return any(
        entry.get("manager") == manager
        and entry.get("operation") == "Apply"
        and "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {})
        for entry in live.get("metadata", {}).get("managedFields") or []
    )


API_SERVER_SLICE = ("default", "kubernetes")


def endpoint_addresses(slice_: dict[str, Any]) -> list[tuple[str, int]]:
    """Sorted (address, port) pairs of an EndpointSlice's ready endpoints (TCP ports only)."""
    ports = [
        int(p["port"])
        for p in slice_.get("ports") or []
        if p.get("port") and p.get("protocol", "TCP") == "TCP"
    ]
    addresses = {
        a
        for e in slice_.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready", True) is not False
        for a in e.get("addresses") or []
    }
    return sorted((a, p) for a in addresses for p in ports)


def owner_metadata(meta: client.V1ObjectMeta | None) -> dict[str, Any]:
    """The ownerReferences of a typed object's metadata, keyed as the API's JSON keys them
    (what `ownership` and `secretrefs` read)."""
    refs = (meta.owner_references if meta else None) or []
    return {"ownerReferences": [{"controller": r.controller, "uid": r.uid} for r in refs]}


def is_permanent(exc: BaseException) -> bool:
    """An API error that retrying cannot fix (the object itself is refused)."""
    return isinstance(exc, ApiException) and exc.status in (400, 403, 422)


def api_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        return str(exc.reason)
    return str(body.get("message") or exc.reason)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_api_client() -> client.ApiClient:
    """From KUBECONFIG (or ~/.kube/config), else the in-cluster service account."""
    try:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = API_THREADS
    return client.ApiClient(cfg)


class Kube:
    def __init__(self, api: client.ApiClient, on_call: Callable[[str], None] | None = None) -> None:
        """on_call(name) is told of every API call sent ("GET secrets", "list_namespaced_pod")."""
        self.api = api
        self._on_call = on_call
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.ext = client.ApiextensionsV1Api(api)
        self._pool = ThreadPoolExecutor(API_THREADS, thread_name_prefix="k8s-api")

    async def _thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._on_call is not None:
            raw = fn == self._raw
            self._on_call(f"{args[0]} {args[1].split('/')[-2]}" if raw else fn.__name__)
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(fn, *args, **kwargs)
        )

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", 30)
        return await self._thread(fn, *args, **kwargs)

    def _raw(
        self,
        method: str,
        path: str,
        body: Any = None,
        accept: str = JSON,
        patch_type: str = "application/apply-patch+yaml",
        **query: str,
    ) -> Any:
        headers = {"Accept": accept}
        if method == "PATCH":
            headers["Content-Type"] = patch_type
        elif body is not None:
            headers["Content-Type"] = JSON
        _, url, headers, body, _ = self.api.param_serialize(
            method,
            path,
            query_params=list(query.items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(method, url, header_params=headers, body=body, _request_timeout=30)
        data: bytes = resp.read()  # type: ignore[no-untyped-call]
        if not 200 <= resp.status < 300:
            raise ApiException(status=resp.status, reason=resp.reason, body=data.decode())
        return json.loads(data) if data else None

    async def apply(self, manifest: Manifest) -> dict[str, Any]:
        """Server-side apply with force: the operator owns every field it declares."""
        meta = manifest["metadata"]
        path = object_path(
            kind_of(manifest["apiVersion"], manifest["kind"]), meta.get("namespace"), meta["name"]
        )
        if manifest["kind"] == "Deployment" and "replicas" not in manifest["spec"]:
            await self._hand_over_replicas(path, manifest)
        result: dict[str, Any] = await self._thread(
            self._raw, "PATCH", path, manifest, fieldManager=FIELD_MANAGER, force="true"
        )
        return result

    async def _hand_over_replicas(self, path: str, manifest: Manifest) -> None:
        """Before an apply that leaves replicas out (autoscaling): if the operator applied
        them so far, another manager first co-owns the current value. Dropping a field the
        applier alone owned would reset it to the default (1 replica) until the HPA acts;
        with a co-owner it stays, and the HPA's next scale takes it over."""
        try:
            live = await self._thread(self._raw, "GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        if not applies_replicas(live):
            return
        hold = {
            "apiVersion": manifest["apiVersion"],
            "kind": manifest["kind"],
            "metadata": {
                "name": live["metadata"]["name"],
                "namespace": live["metadata"]["namespace"],
            },
            "spec": {"replicas": live["spec"]["replicas"]},
        }
        await self._thread(
            self._raw, "PATCH", path, hold, fieldManager=HANDOVER_MANAGER, force="true"
        )

    async def delete(self, kind: Kind, live: dict[str, Any]) -> bool:
        """Delete the object whose metadata `live` was just read, and only that object:
        the UID and resourceVersion are preconditions, so an object replaced or changed
        since the read (whose ownership was not checked) is never deleted (409, retried).
        True when something was deleted."""
        path = object_path(kind, live.get("namespace"), live["name"])
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
            "preconditions": {"uid": live["uid"], "resourceVersion": live["resourceVersion"]},
        }
        try:
            await self._thread(self._raw, "DELETE", path, options)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def read_metadata(
        self, kind: Kind, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """An object's metadata only (PartialObjectMetadata: labels, annotations, owners,
        uid, resourceVersion); None when it does not exist. The API server never sends
        the object's data, so this is safe on Secrets not yet checked."""
        path = object_path(kind, namespace, name)
        try:
            obj: dict[str, Any] = await self._thread(self._raw, "GET", path, accept=METADATA_ONLY)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        meta: dict[str, Any] = obj.get("metadata") or {}
        return meta

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A read that answers None when the object does not exist."""
        try:
            return await self._call(fn, *args)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One of our own resources, or None when it does not exist."""
        obj: dict[str, Any] | None = await self._read(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
        )
        return obj

    async def get_core(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.get_custom(QSysCore.PLURAL, namespace, name)

    async def get_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.get_custom(AccessPolicy.PLURAL, namespace, name)

    async def list_custom(
        self, plural: str, namespace: str | None, field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Our resources of `plural`; field_selector only with a namespace (a 400 when the
        CRD does not declare the field selectable)."""
        if namespace:
            selected = {"field_selector": field_selector} if field_selector else {}
            result = await self._call(
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                plural,
                **selected,
            )
        else:
            result = await self._call(
                self.custom.list_cluster_custom_object, GROUP, VERSION, plural
            )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> str | None:
        """Merge-patch the status; the resourceVersion it made."""
        answer = await self._call(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            {"status": status},
        )
        version = ((answer or {}).get("metadata") or {}).get("resourceVersion")
        return str(version) if version else None

    async def read_secret(self, namespace: str, name: str) -> client.V1Secret | None:
        secret: client.V1Secret | None = await self._read(
            self.core.read_namespaced_secret, name, namespace
        )
        return secret

    async def read_secret_metadata(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.read_metadata(SECRET, namespace, name)

    def unseen(self, namespace: str, name: str) -> bool:
        return False

    async def patch_secret_metadata(
        self,
        namespace: str,
        name: str,
        resource_version: str | None,
        owner_references: list[dict[str, Any]],
        annotations: dict[str, str],
    ) -> None:
        """Set a Secret's ownerReferences and add annotations, only if it is unchanged since
        read (resourceVersion): a Secret replaced in between is never re-owned. Its data is
        not touched."""
        path = object_path(SECRET, namespace, name)
        live = await self.read_secret_metadata(namespace, name) or {}
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
            {"op": "add", "path": "/metadata/ownerReferences", "value": owner_references},
            {
                "op": "add",
                "path": "/metadata/annotations",
                "value": {**(live.get("annotations") or {}), **annotations},
            },
        ]
        await self._thread(self._raw, "PATCH", path, ops, patch_type="application/json-patch+json")

    async def create(self, manifest: Manifest) -> client.V1Secret | None:
        """Create a Secret and answer it as created; None when one of its name exists
        already (never overwritten)."""
        try:
            created: client.V1Secret = await self._call(
                self.core.create_namespaced_secret, manifest["metadata"]["namespace"], manifest
            )
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise
        return created

    async def api_server_endpoints(self) -> list[tuple[str, int]] | None:
        """(address, port) of the API server as pods reach it: the ready endpoints of the
        EndpointSlice default/kubernetes, which the API server maintains itself. None when
        the slice does not exist."""
        path = object_path(ENDPOINT_SLICE, API_SERVER_SLICE[0], API_SERVER_SLICE[1])
        try:
            obj: dict[str, Any] = await self._thread(self._raw, "GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return endpoint_addresses(obj)

    async def read_deployment(self, namespace: str, name: str) -> client.V1Deployment | None:
        dep: client.V1Deployment | None = await self._read(
            self.apps.read_namespaced_deployment, name, namespace
        )
        return dep

    async def list_pods(self, namespace: str, selector: str) -> list[client.V1Pod]:
        pods = await self._call(self.core.list_namespaced_pod, namespace, label_selector=selector)
        items: list[client.V1Pod] = pods.items
        return items

    async def crd_served(self, name: str, version: str) -> bool:
        try:
            crd = await self._call(self.ext.read_custom_resource_definition, name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        served = any(v.name == version and v.served for v in crd.spec.versions)
        conditions = (crd.status and crd.status.conditions) or []
        established = any(c.type == "Established" and c.status == "True" for c in conditions)
        return bool(served and established)

    async def get_cluster_custom(
        self, group: str, version: str, plural: str, name: str, namespace: str | None
    ) -> dict[str, Any] | None:
        try:
            if namespace:
                obj: dict[str, Any] = await self._call(
                    self.custom.get_namespaced_custom_object,
                    group,
                    version,
                    namespace,
                    plural,
                    name,
                )
            else:
                obj = await self._call(
                    self.custom.get_cluster_custom_object, group, version, plural, name
                )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    async def create_custom(
        self, group: str, version: str, plural: str, body: dict[str, Any], namespace: str | None
    ) -> None:
        try:
            if namespace:
                await self._call(
                    self.custom.create_namespaced_custom_object,
                    group,
                    version,
                    namespace,
                    plural,
                    body,
                )
            else:
                await self._call(
                    self.custom.create_cluster_custom_object, group, version, plural, body
                )
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on obj (a custom resource body). Best effort."""
        meta = obj["metadata"]
        stamp = now()
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self._call(self.core.create_namespaced_event, meta["namespace"], body)


class SecretApi(Protocol):
    """The Secret calls of tokens.py: Kube's, or KnownSecrets in front of them."""

    def unseen(self, namespace: str, name: str) -> bool:
        """True when the Secret most likely does not exist (then creating it first saves a
        read that would answer 404; a 409 still means it exists and is read)."""
        ...

    async def read_secret(self, namespace: str, name: str) -> client.V1Secret | None: ...

    async def read_secret_metadata(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create(self, manifest: Manifest) -> client.V1Secret | None: ...

    async def patch_secret_metadata(
        self,
        namespace: str,
        name: str,
        resource_version: str | None,
        owner_references: list[dict[str, Any]],
        annotations: dict[str, str],
    ) -> None: ...


def _compact(secret: client.V1Secret) -> client.V1Secret:
    """What the operator reads of a Secret (no managedFields, labels, timestamps)."""
    meta = secret.metadata or client.V1ObjectMeta()
    return client.V1Secret(
        metadata=client.V1ObjectMeta(
            name=meta.name,
            namespace=meta.namespace,
            uid=meta.uid,
            resource_version=meta.resource_version,
            annotations=meta.annotations,
            owner_references=meta.owner_references,
        ),
        data=secret.data,
        type=secret.type,
    )


class KnownSecrets:
    """Secret reads answered from the last read or create of the same Secret while the
    child watch's latest version of it (`latest(namespace, name)`) is still the version
    that read or create returned: nobody has changed it since, so a read would answer the
    same. Any change, delete or re-create by anyone is a newer version (or none), and the
    Secret is read again. Only Secrets the child watch sees (the operator's managed-by
    label) are ever answered from here. The API answers are kept without managedFields.

    The watch lags the API server by the time an event takes to arrive; within that
    moment a Secret replaced by someone else still answers as the operator's own, which
    can only mean a token or key the operator generated is used once more, never that a
    foreign Secret's data is used or anything is written into it (the metadata patch of
    tokens.py carries the resourceVersion as a precondition)."""

    def __init__(
        self, kube: SecretApi, latest: Callable[[str, str], str | None], limit: int = 100_000
    ) -> None:
        self._kube = kube
        self._latest = latest
        self._limit = limit
        self._known: dict[tuple[str, str], client.V1Secret] = {}
        self.hits = 0

    def _remember(self, namespace: str, name: str, secret: client.V1Secret | None) -> None:
        if secret is None or secret.metadata is None or not secret.metadata.resource_version:
            self._known.pop((namespace, name), None)
            return
        if len(self._known) >= self._limit:
            self._known.clear()
        self._known[(namespace, name)] = _compact(secret)

    def applied(self, answer: dict[str, Any]) -> None:
        """A Secret as the API server answered its apply (JSON)."""
        meta = answer.get("metadata") or {}
        refs = [
            client.V1OwnerReference(
                api_version=r.get("apiVersion"),
                kind=r.get("kind"),
                name=r.get("name"),
                uid=r.get("uid"),
                controller=r.get("controller"),
            )
            for r in meta.get("ownerReferences") or []
        ]
        secret = client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=meta.get("name"),
                namespace=meta.get("namespace"),
                uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion"),
                annotations=meta.get("annotations"),
                owner_references=refs or None,
            ),
            data=answer.get("data"),
            type=answer.get("type"),
        )
        self._remember(str(meta.get("namespace")), str(meta.get("name")), secret)

    def unseen(self, namespace: str, name: str) -> bool:
        """The child watch has no version of it: it does not exist, or the watch has not
        told of it yet (just created, or the operator just started)."""
        return self._latest(namespace, name) is None

    def forget(self, namespace: str, name: str) -> None:
        self._known.pop((namespace, name), None)

    async def read_secret(self, namespace: str, name: str) -> client.V1Secret | None:
        known = self._known.get((namespace, name))
        if known is not None:
            assert known.metadata is not None
            if self._latest(namespace, name) == known.metadata.resource_version:
                self.hits += 1
                return known
            del self._known[(namespace, name)]
        secret = await self._kube.read_secret(namespace, name)
        self._remember(namespace, name, secret)
        return secret

    async def read_secret_metadata(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._kube.read_secret_metadata(namespace, name)

    async def create(self, manifest: Manifest) -> client.V1Secret | None:
        created = await self._kube.create(manifest)
        if created is not None:
            meta = manifest["metadata"]
            self._remember(meta["namespace"], meta["name"], created)
        return created

    async def patch_secret_metadata(
        self,
        namespace: str,
        name: str,
        resource_version: str | None,
        owner_references: list[dict[str, Any]],
        annotations: dict[str, str],
    ) -> None:
        self.forget(namespace, name)
        await self._kube.patch_secret_metadata(
            namespace, name, resource_version, owner_references, annotations
        )
