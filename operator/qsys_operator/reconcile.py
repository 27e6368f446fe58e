"""One reconcile per QSysCore name: fetch, render, apply, write status and Events.

Every trigger (the core, its policies, its children, the resync loop) only adds
the core to the work queue (queueing.py), which coalesces bursts and retries
failures with backoff. The status itself is derived by the pure functions of
derive.py; an object the API server refuses (a permanent error) is reported
there with its message instead of being retried.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import itertools
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yaml
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from qsys_protocol.config import ConfigError, SubjectConfig, parse_config

from .api import CORE_CREDENTIALS, TLS, AccessPolicy, QSysCore
from .derive import (
    CoreFindings,
    PolicyFindings,
    Replicas,
    StatusUpdate,
    core_limit_problem,
    core_status,
    invalid_core_status,
    limited_core_status,
    policy_status,
    rollout_progress,
)
from .images import image_problem as image_problem_of
from .k8s import KnownSecrets, Kube, api_message, is_permanent, now, owner_metadata
from .kinds import CLUSTER_ROLE_BINDING, DEPLOYMENT, SECRET, SERVICE_MONITOR, Kind, kind_of
from .metrics import OperatorMetrics
from .ownership import NameConflict, Owner, conflicts_message, controlled_by, owns
from .peering import Peering
from .probe import CoreView, probe_core
from .queueing import WorkQueue
from .render import (
    CONFIG_KEY,
    Manifest,
    PolicyBinding,
    RenderResult,
    config_secret_name,
    gateway_name,
    grace_periods,
    render_core_children,
)
from .render.common import selector_labels
from .render.identity import token_review_binding_name
from .secretrefs import credentials_problem, marker_problem
from .settings import OperatorSettings
from .tokens import PolicyTokens, proof_key, resolve_tokens, token_key

log = logging.getLogger("qsys_operator.reconcile")

Key = tuple[str, str]
ChildKey = tuple[str, str | None, str]
"""(plural, namespace or None when cluster-scoped, name) of a child."""
MAX_REMEMBERED_REFUSALS = 10000
"""Secret refusals remembered so each is logged once per change (cleared when full)."""
MAX_CONCURRENT_RECONCILES = 24
"""Bounding reconciles in flight keeps a burst of hundreds of cores from holding hundreds
of half-done renders in memory. A reconcile is mostly waiting for the API server (a few
round trips in a row), so at a thousand cores 24 in flight reconcile about twice as
fast as 12 (docs/performance.md) for a few MiB more."""


@dataclass(frozen=True)
class Fetched:
    """What the fetch phase read: the core's body (None: it is gone) and its policies."""

    body: dict[str, Any] | None
    policies: list[AccessPolicy]
    since: int
    """monotonic_ns before the first read: shared lists must be sent after it."""


@dataclass(frozen=True)
class Checked:
    """The secrets phase: the token key, each policy's tokens, refused Secrets."""

    key: bytes | None
    key_problem: str | None
    """Why there is no usable token key (then nothing is applied)."""
    tokens: dict[str, PolicyTokens]
    creds_problem: str | None
    tls_problem: str | None


@dataclass(frozen=True)
class Plan:
    """The render phase: the wanted children and why they may not be applied."""

    result: RenderResult
    image_problem: str | None
    identity_note: str | None


@dataclass(frozen=True)
class Applied:
    """What applying a core's children came to."""

    error: str | None = None
    """The API server refused an object (permanent: reported, not retried)."""
    service_monitor_note: str | None = None
    conflicts: list[NameConflict] = field(default_factory=list)
    """Objects of the children's names that are not the core's: nothing was applied."""
    deployment: dict[str, Any] | None = None
    """The gateway Deployment as the API server answered its apply (with its status)."""


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        settings: OperatorSettings,
        metrics: OperatorMetrics,
        peering: Peering,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.metrics = metrics
        self.peering = peering
        self.queue: WorkQueue[Key] = WorkQueue(
            self._reconcile_key,
            concurrency=MAX_CONCURRENT_RECONCILES,
            group=_namespace,
            gate=peering.active,
            on_error=self._failed,
        )
        self._policy_cores: dict[Key, str] = {}
        self._cores: set[Key] = set()
        self._sm_served: bool | None = None
        self._sm_changes = 0
        """Counts ServiceMonitor CRD events: an answer read across one is not kept."""
        self._session: aiohttp.ClientSession | None = None
        self._lists: dict[tuple[str, str], tuple[int, asyncio.Task[list[dict[str, Any]]]]] = {}
        self._proof_key: bytes | None = None
        self._refusals: dict[tuple[str, str], str] = {}
        self._absent: set[ChildKey] = set()
        """Unwanted children a read found absent, and not seen by the child watch since:
        their delete is skipped (cleared on resync)."""
        self._child_events: dict[ChildKey, int] = {}
        """The sequence number of each child's latest watch event (cleared on resync), to
        tell whether one arrived during a read."""
        self._event_seq = itertools.count(1)
        self._children: dict[ChildKey, dict[str, Any]] = {}
        """Metadata of the labelled children as the child watch last saw them: a child
        found here as the core's own needs no read before its apply."""
        self._finished: dict[Key, float] = {}
        """monotonic time the latest successful reconcile of each managed core ended."""
        self._digests: dict[ChildKey, str] = {}
        """SHA-256 of the manifest each child was last applied from."""
        self._written: dict[ChildKey, str] = {}
        """resourceVersion of the operator's latest write of each object (applied child,
        status): the watch event of that very version is no news and triggers nothing."""
        self._applied_spec: dict[ChildKey, tuple[Any, list[str]]] = {}
        """(generation, owner UIDs) of each Deployment as the operator's apply answered."""
        self._select_policies = True
        """Whether lists may select policies by spec.coreRef.name (until a 400 says no)."""
        self.secrets = KnownSecrets(kube, self._seen_secret_version)
        """The token key, token and config Secrets as last read or created, while the
        child watch has seen no newer version of them."""

    async def _proof(self) -> bytes:
        if self._proof_key is None:
            self._proof_key = await proof_key(self.kube, self.settings)
        return self._proof_key

    def _seen_secret_version(self, namespace: str, name: str) -> str | None:
        seen = self._children.get(_child_key(SECRET, namespace, name))
        return None if seen is None else seen.get("resourceVersion")

    # ---- triggers ------------------------------------------------------------

    def trigger(self, namespace: str, core: str) -> None:
        self.queue.add((namespace, core))

    def core_seen(self, namespace: str, core: str, resource_version: str | None) -> None:
        """A core event: reconcile it, unless the event is of the status this operator
        just wrote (nothing changed that it does not know)."""
        if not self._written_by_us((QSysCore.PLURAL, namespace, core), resource_version):
            self.trigger(namespace, core)

    def policy_seen(
        self, namespace: str, policy: str, core: str | None, resource_version: str | None = None
    ) -> None:
        """A policy event: re-render its core, and the one it left when coreRef changed;
        nothing for the status this operator just wrote."""
        old = self._policy_cores.get((namespace, policy))
        key = (AccessPolicy.PLURAL, namespace, policy)
        if core is None:
            self._policy_cores.pop((namespace, policy), None)
            self._written.pop(key, None)
        else:
            self._policy_cores[(namespace, policy)] = core
            if not self._written_by_us(key, resource_version) or old != core:
                self.trigger(namespace, core)
        if old and old != core:
            self.trigger(namespace, old)

    def _written_by_us(self, key: ChildKey, resource_version: str | None) -> bool:
        return resource_version is not None and self._written.get(key) == resource_version

    async def token_secret_changed(self, namespace: str, policy: str) -> None:
        core = self._policy_cores.get((namespace, policy))
        if core is None:
            body = await self.kube.get_policy(namespace, policy)
            core = ((body or {}).get("spec", {}).get("coreRef") or {}).get("name")
        if core:
            self.trigger(namespace, core)

    @property
    def managed_cores(self) -> int:
        return len(self._cores)

    def child_seen(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        meta: Mapping[str, Any] | None = None,
        deleted: bool = False,
        body: Mapping[str, Any] | None = None,
    ) -> bool:
        """A watch event of a labelled child (its metadata; deleted: it is gone; body: the
        whole object, of which a Deployment's replicas are kept). Whatever it was, the
        child is no longer known absent. False when the event is of the version the
        operator's own apply just wrote: no news, so no reconcile."""
        key = _child_key(kind, namespace, name)
        self._absent.discard(key)
        self._child_events[key] = next(self._event_seq)
        if deleted or meta is None:
            self._children.pop(key, None)
            self._written.pop(key, None)
            self._digests.pop(key, None)
            self._applied_spec.pop(key, None)
            return True
        seen = {
            k: meta.get(k)
            for k in (
                "uid",
                "resourceVersion",
                "generation",
                "ownerReferences",
                "labels",
                "annotations",
            )
        }
        if kind == DEPLOYMENT and body is not None:
            seen["replicas"] = _deployment_replicas(body)
        self._children[key] = seen
        return not self._written_by_us(key, meta.get("resourceVersion"))

    def service_monitor_crd_changed(self) -> None:
        self._sm_served = None
        self._sm_changes += 1
        for ns, name in list(self._cores):
            self.trigger(ns, name)

    def core_deleted(self, namespace: str, core: str) -> None:
        self._managed(namespace, core, False)
        self._written.pop((QSysCore.PLURAL, namespace, core), None)
        self.trigger(namespace, core)  # its policies become unbound

    async def resync(self) -> None:
        """Unless more reconciles are pending than run at once (then the next period tries
        again), trigger every core (and every core name a policy refers to) in the watched
        namespaces that no reconcile finished within the last half resync period: a core
        an event reconciled a moment ago would only be reconciled again for nothing (at a
        thousand cores, every core every period is more than the API server's share),
        and each core is still reconciled at least every one and a half periods. Forgets
        which children were found absent, and which were applied unchanged."""
        if not await self.peering.active():
            return
        if self.queue.busy > MAX_CONCURRENT_RECONCILES:
            # Events keep it busy already; a resync now would queue every core behind them
            # (at a thousand cores: for minutes). The next period tries again.
            log.info("resync skipped: reconciles pending", extra={"pending": self.queue.busy})
            return
        self._absent.clear()
        self._child_events.clear()
        self._digests.clear()
        recent = time.monotonic() - self.settings.resync_seconds / 2
        namespaces: list[str | None] = list(self.settings.watch_namespaces) or [None]
        due: set[Key] = set()
        for ns in namespaces:
            for core in await self.kube.list_custom(QSysCore.PLURAL, ns):
                meta = core["metadata"]
                due.add((meta["namespace"], meta["name"]))
            for pol in await self.kube.list_custom(AccessPolicy.PLURAL, ns):
                ref = (pol.get("spec") or {}).get("coreRef") or {}
                if ref.get("name"):
                    due.add((pol["metadata"]["namespace"], ref["name"]))
        for key in sorted(due):
            if self._finished.get(key, -math.inf) <= recent:
                self.trigger(*key)

    async def close(self) -> None:
        await self.queue.close()
        if self._session is not None:
            await self._session.close()

    def _failed(self, key: Key, exc: Exception, retry_in: float) -> None:
        self.metrics.reconcile_total.labels(QSysCore.KIND, "error").inc()
        log.warning(
            "reconcile failed; retrying",
            extra={
                "namespace": key[0],
                "core": key[1],
                "error": _describe(exc),
                "retryInSeconds": retry_in,
            },
        )

    def _managed(self, namespace: str, name: str, managed: bool) -> None:
        if managed:
            self._cores.add((namespace, name))
        else:
            self._cores.discard((namespace, name))
        self.metrics.managed_cores.set(len(self._cores))

    # ---- the reconcile -----------------------------------------------------------

    async def _reconcile_key(self, key: Key) -> None:
        await self.reconcile(*key)
        if key in self._cores:
            self._finished[key] = time.monotonic()
        else:
            self._finished.pop(key, None)

    async def reconcile(self, namespace: str, name: str) -> None:
        """One pass over a core, in named phases: fetch (reads only), admit (schema and
        core limit), secrets (the token key and generated tokens are created here, the
        referenced Secrets checked), render (pure, from what was read), apply (children),
        observe (the gateway Deployment and probe), report (status and Events)."""
        started = time.monotonic()
        fetched = await self._fetch(namespace, name)
        # A core being deleted counts as gone: under foreground deletion (kubectl
        # --cascade=foreground, Argo CD's cascading delete) it stays until the garbage
        # collector has removed its children, and re-applying them would keep it forever.
        if fetched.body is None or (fetched.body.get("metadata") or {}).get("deletionTimestamp"):
            await self._release(namespace, name, fetched.policies)
            return
        self._managed(namespace, name, True)
        core = await self._admit(fetched)
        if core is None:
            self.metrics.reconcile_total.labels(QSysCore.KIND, "permanent_error").inc()
            return
        checked = await self._secrets(core, fetched.policies)
        plan = await self._render(core, fetched.policies, checked)
        if checked.key is None or plan.image_problem:
            # Nothing is applied without a usable token key, or for an image the platform
            # does not run: an existing Deployment stays as it was.
            applied = Applied()
        else:
            applied = await self._apply(core, plan.result)
        replicas, view = await self._observe(core, applied)
        await self._report(fetched, core, checked, plan, applied, replicas, view)
        outcome = "permanent_error" if applied.error or applied.conflicts else "success"
        self.metrics.reconcile_total.labels(QSysCore.KIND, outcome).inc()
        self.metrics.reconcile_duration.labels(QSysCore.KIND).observe(time.monotonic() - started)

    async def _fetch(self, namespace: str, name: str) -> Fetched:
        """The core and the AccessPolicies naming it, read after the reconcile started."""
        since = time.monotonic_ns()
        body, policies = await asyncio.gather(
            self.kube.get_core(namespace, name), self._policies(namespace, name, since)
        )
        return Fetched(body, policies, since)

    async def _release(self, namespace: str, name: str, policies: list[AccessPolicy]) -> None:
        """The core is gone: remove its cluster-scoped binding (not garbage-collected with
        the core) and tell its policies they are unbound."""
        self._managed(namespace, name, False)
        await self._delete_owned(
            Owner(namespace, name, None),
            CLUSTER_ROLE_BINDING,
            token_review_binding_name(namespace, name),
        )
        for policy in policies:
            checked = await resolve_tokens(self.secrets, policy, None, await self._proof())
            await self._write_policy(policy, None, None, checked)

    async def _admit(self, fetched: Fetched) -> QSysCore | None:
        """The core's model, or None (status written) when it does not match the schema or
        is beyond its namespace's core limit."""
        body = fetched.body
        assert body is not None
        old = body.get("status") or {}
        try:
            core = QSysCore.model_validate(body)
        except ValidationError as exc:
            # The CRD schema should have refused it; say what is wrong and wait for a fix.
            problem = str(exc.errors(include_input=False)[:3])
            generation = body["metadata"].get("generation")
            await self._write(
                body, QSysCore.PLURAL, invalid_core_status(generation, old, problem, now())
            )
            return None
        limited = await self._limit_problem(core, fetched.since)
        if limited is None:
            return core
        # Nothing of it is created (not even its token key); its policies say why.
        update = limited_core_status(core.metadata.generation, old, limited, now())
        await self._write(body, QSysCore.PLURAL, update)
        why = f"QSysCore {core.metadata.name} is not rendered: {limited}"
        for policy in fetched.policies:
            await self._write_policy(policy, core, None, PolicyTokens(), why)
        return None

    async def _secrets(self, core: QSysCore, policies: list[AccessPolicy]) -> Checked:
        """The token key and every policy's tokens (generated Secrets are created when
        missing), and the checks of the credentials and TLS Secrets the core names."""
        namespace = core.metadata.namespace
        key = await token_key(self.secrets, core)
        key_bytes = key if isinstance(key, bytes) else None
        proof = await self._proof()
        resolved = await asyncio.gather(
            *(resolve_tokens(self.secrets, p, key_bytes, proof, core) for p in policies)
        )
        tokens = {p.metadata.name: t for p, t in zip(policies, resolved, strict=True)}
        for p in policies:
            causes = tokens[p.metadata.name].causes
            for sub in p.spec.subjects:
                if sub.tokenSecretRef is not None:
                    what = f"AccessPolicy {p.metadata.name} subject {sub.name}"
                    self._refused(namespace, what, sub.tokenSecretRef.name, causes.get(sub.name))
        creds_problem = await self._secret_problem(core, CORE_CREDENTIALS)
        tls_problem = await self._secret_problem(core, TLS)
        return Checked(
            key=key_bytes,
            key_problem=key if isinstance(key, str) else None,
            tokens=tokens,
            creds_problem=creds_problem,
            tls_problem=tls_problem,
        )

    async def _render(self, core: QSysCore, policies: list[AccessPolicy], checked: Checked) -> Plan:
        """The children the core wants. Reads the two inputs only the render needs (the
        config the gateways run now, for rotation grace periods; the API server's
        endpoints, when a subject is a ServiceAccount), then renders (pure)."""
        rendered = await self._rendered_subjects(core)
        stamp = dt.datetime.now(dt.UTC)
        bindings = [
            PolicyBinding(
                p,
                checked.tokens[p.metadata.name].hashes,
                grace_periods(p, checked.tokens[p.metadata.name].hashes, rendered, stamp),
            )
            for p in policies
        ]
        # Refused Secrets are left out of the pods, never mounted.
        renderable = _without_secrets(
            core, creds=checked.creds_problem is not None, tls=bool(checked.tls_problem)
        )
        api_server, identity_note = await self._api_server(core, policies)
        result = render_core_children(renderable, bindings, self.settings, api_server)
        image_problem = image_problem_of(
            core.spec.gateway.image, self.settings.gateway_image, self.settings.allowed_images
        )
        return Plan(result, image_problem, identity_note if result.identity else None)

    async def _observe(self, core: QSysCore, applied: Applied) -> tuple[Replicas, CoreView]:
        """The gateway Deployment's replicas (from the apply's answer when it was applied,
        else one read) and the gateways' view of the Core (probe)."""
        deployment = applied.deployment
        name = gateway_name(core.metadata.name)
        seen = self._children.get(_child_key(DEPLOYMENT, core.metadata.namespace, name)) or {}
        if deployment is not None:
            replicas = _replicas_of(deployment)
        elif isinstance(seen.get("replicas"), Replicas) and not (
            applied.error or applied.conflicts
        ):
            # Not applied because unchanged: the watch's latest version is as fresh as
            # the event that triggered this reconcile.
            replicas = seen["replicas"]
        else:
            replicas = await self._replicas(core.metadata.namespace, name)
        return replicas, await self._probe(core)

    async def _report(
        self,
        fetched: Fetched,
        core: QSysCore,
        checked: Checked,
        plan: Plan,
        applied: Applied,
        replicas: Replicas,
        view: CoreView,
    ) -> None:
        """The core's and its policies' status and Events, derived from the findings."""
        body = fetched.body
        assert body is not None
        name = core.metadata.name
        result = plan.result
        refused = [r for r in (checked.creds_problem, checked.tls_problem) if r]
        found = CoreFindings(
            gateway_name=gateway_name(name),
            replicas=replicas,
            connected=view.condition,
            engine=view.engine,
            subjects=result.subjects,
            apply_error=applied.error,
            service_monitor_note=applied.service_monitor_note,
            name_conflict=conflicts_message(applied.conflicts) if applied.conflicts else None,
            secret_problem=checked.key_problem or "; ".join(refused) or None,
            service_account_audience=core.service_account_audience,
            identity_note=plan.identity_note,
            egress_note=result.egress_note,
            image_problem=plan.image_problem,
        )
        update = core_status(
            core.metadata.generation,
            core.spec.gateway.min_replicas,
            body.get("status") or {},
            found,
            now(),
        )
        await self._write(body, QSysCore.PLURAL, update)
        held = checked.key_problem or plan.image_problem or found.name_conflict
        not_rendered = f"QSysCore {name} is not rendered: {held}" if held else None
        await asyncio.gather(
            *(
                self._write_policy(
                    policy, core, result, checked.tokens[policy.metadata.name], not_rendered
                )
                for policy in fetched.policies
            )
        )

    async def _rendered_subjects(self, core: QSysCore) -> list[SubjectConfig]:
        """The subjects of the config the gateways run now (for rotation grace periods);
        none when the config Secret is not the core's own (its hashes would carry over)."""
        secret = await self.secrets.read_secret(
            core.metadata.namespace, config_secret_name(core.metadata.name)
        )
        if secret is None or not controlled_by(owner_metadata(secret.metadata), core.metadata.uid):
            return []
        raw = (secret.data or {}).get(CONFIG_KEY)
        if not raw:
            return []
        try:
            return parse_config(yaml.safe_load(base64.b64decode(raw))).subjects
        except (ConfigError, yaml.YAMLError, binascii.Error, ValueError) as exc:
            log.warning("rendered config unreadable", extra={"error": _describe(exc)})
            return []

    async def _shared_list(self, plural: str, namespace: str, since: int) -> list[dict[str, Any]]:
        """The namespace's objects of `plural` (ours) as listed by a call sent after `since`.

        Reconciles running at once share one list call (instead of one each, which is
        quadratic with many cores and policies), but only a call sent after the reconcile
        started, so none reads data older than what triggered it.
        """
        entry = self._lists.get((plural, namespace))
        if entry is None or entry[0] <= since:
            task = asyncio.get_running_loop().create_task(self.kube.list_custom(plural, namespace))
            entry = (time.monotonic_ns(), task)
            self._lists[(plural, namespace)] = entry
        return await asyncio.shield(entry[1])

    async def _limit_problem(self, core: QSysCore, since: int) -> str | None:
        """Why the core is beyond its namespace's core limit (None: within, or no limit)."""
        limit = self.settings.max_cores_per_namespace
        if not limit:
            return None
        ns = core.metadata.namespace
        listed = await self._shared_list(QSysCore.PLURAL, ns, since)
        cores = [
            (str(c["metadata"].get("creationTimestamp") or ""), c["metadata"]["name"])
            for c in listed
        ]
        return core_limit_problem(core.metadata.name, ns, cores, limit)

    async def _policies(self, namespace: str, core: str, since: int) -> list[AccessPolicy]:
        """The policies naming the core: one list selecting them by spec.coreRef.name (the
        CRD's selectable field), so a reconcile reads its own few policies, not every
        policy of the namespace. Where the API server refuses the selector (a CRD of an
        earlier release, or the feature turned off), the namespace's policies are listed
        (one list shared by the reconciles running at once) and filtered here.

        A policy with a deletionTimestamp counts as gone, as a core does: under foreground
        deletion (Argo CD's prune, kubectl --cascade=foreground) it stays until the garbage
        collector has cut its generated token Secrets loose; rendered meanwhile, its tokens
        would stay admitted, and its owner reference put back on those Secrets would make
        the collector start over."""
        listed = None
        if self._select_policies:
            selector = f"{AccessPolicy.CORE_REF_FIELD}={core}"
            try:
                listed = await self.kube.list_custom(AccessPolicy.PLURAL, namespace, selector)
            except ApiException as exc:
                if exc.status != 400:
                    raise
                log.warning(
                    "the API server cannot select AccessPolicies by spec.coreRef.name (is the "
                    "AccessPolicy CRD up to date?); listing every policy of the namespace",
                    extra={"error": _describe(exc)},
                )
                self._select_policies = False
        if listed is None:
            listed = await self._shared_list(AccessPolicy.PLURAL, namespace, since)
        out = []
        for raw in listed:
            if ((raw.get("spec") or {}).get("coreRef") or {}).get("name") != core:
                continue
            if (raw.get("metadata") or {}).get("deletionTimestamp"):
                continue
            try:
                out.append(AccessPolicy.model_validate(raw))
            except ValidationError:
                log.warning(
                    "AccessPolicy does not match the schema; ignored",
                    extra={"namespace": namespace, "policy": raw["metadata"]["name"]},
                )
        return out

    async def _api_server(
        self, core: QSysCore, policies: list[AccessPolicy]
    ) -> tuple[list[tuple[str, int]], str | None]:
        """The API server's endpoints for the gateway's NetworkPolicy, read only when a
        policy has ServiceAccount subjects and the NetworkPolicy is on; and a note when
        they are unknown (the gateways then cannot review tokens and refuse them)."""
        wanted = core.spec.networkPolicy.enabled and any(
            s.serviceAccount for p in policies for s in p.spec.subjects
        )
        if not wanted:
            return [], None
        endpoints = await self.kube.api_server_endpoints()
        if endpoints:
            return endpoints, None
        return [], (
            "the API server's endpoints (EndpointSlice default/kubernetes) are unknown, so the "
            "NetworkPolicy does not let the gateways reach it: ServiceAccount tokens are refused"
        )

    async def _service_monitor_served(self) -> bool:
        """Whether the cluster serves ServiceMonitors, read once and kept until the CRD
        changes. An answer read while the CRD changed (created, then Established a moment
        later) is used by this reconcile only: kept, it would hide the change from the
        reconcile the change triggered."""
        served = self._sm_served
        if served is None:
            changes = self._sm_changes
            served = await self.kube.crd_served(SERVICE_MONITOR.crd_name, SERVICE_MONITOR.version)
            if changes == self._sm_changes:
                self._sm_served = served
        return served

    async def _apply(self, core: QSysCore, result: RenderResult) -> Applied:
        """Apply the wanted children and delete the unwanted ones, all or nothing against
        name conflicts: when any object of a wanted child's name is not the core's own,
        nothing at all is applied or deleted (so no pod runs as a foreign ServiceAccount,
        mounts a foreign Secret or sits behind a foreign Service). A refused object is
        reported, not retried."""
        meta = core.metadata
        owner = Owner(meta.namespace, meta.name, meta.uid)
        wanted = list(result.objects)
        note = None
        served = await self._service_monitor_served()
        if result.service_monitor is not None:
            if served:
                wanted.append(result.service_monitor)
            else:
                note = (
                    "ServiceMonitor not created: the cluster does not serve "
                    "monitoring.coreos.com/v1 (install the Prometheus Operator CRDs)"
                )
        conflicts = await self._conflicts(owner, wanted)
        if conflicts:
            return Applied(service_monitor_note=note, conflicts=conflicts)
        current: dict[str, Any] = {}
        deployment = None
        try:
            for obj in wanted:
                current = obj
                kind = kind_of(obj["apiVersion"], obj["kind"])
                key = _child_key(kind, meta.namespace, obj["metadata"]["name"])
                digest = _digest(obj)
                if self._unchanged(key, digest, obj):
                    continue
                answer = await self.kube.apply(obj)
                self._wrote(kind, meta.namespace, answer)
                if kind == DEPLOYMENT:
                    self._applied_spec[key] = _spec_version(answer)
                if kind == SECRET:
                    self.secrets.applied(answer)
                self._digests[key] = digest
                if obj["kind"] == DEPLOYMENT.kind:
                    deployment = answer
            await asyncio.gather(
                *(
                    self._delete_owned(owner, ref.kind, ref.name)
                    for ref in result.absent
                    if served or not ref.kind.optional
                )
            )
        except ApiException as exc:
            if not is_permanent(exc):
                raise
            what = f"{current.get('kind')} {current.get('metadata', {}).get('name')}"
            return Applied(f"{what} refused by the API server: {api_message(exc)}", note)
        return Applied(None, note, deployment=deployment)

    def _unchanged(self, key: ChildKey, digest: str, manifest: Manifest) -> bool:
        """The child was applied from this very manifest, and the watch's latest view of
        it is the version that apply made: nobody changed it since, so applying it again
        would change nothing. Any other change (drift, a delete) is a newer version, and
        the child is applied. A Deployment's status (the controller's, a new version each
        time) is no change: its spec is unchanged while its generation is the one the
        operator's apply made, and its metadata while its owners are those the apply
        answered and the labels and annotations the manifest sets have their values."""
        seen = self._children.get(key)
        if seen is None or self._digests.get(key) != digest:
            return False
        if seen.get("resourceVersion") == self._written.get(key):
            return True
        applied = self._applied_spec.get(key)
        if applied is None or seen.get("generation") != applied[0]:
            return False
        owners = sorted(str(r.get("uid")) for r in seen.get("ownerReferences") or [])
        meta = manifest["metadata"]
        return (
            owners == applied[1]
            and _holds(seen.get("labels"), meta.get("labels"))
            and _holds(seen.get("annotations"), meta.get("annotations"))
        )

    def _wrote(self, kind: Kind, namespace: str, answer: Mapping[str, Any] | None) -> None:
        meta = (answer or {}).get("metadata") or {}
        key = _child_key(kind, namespace, str(meta.get("name")))
        if meta.get("resourceVersion"):
            self._written[key] = meta["resourceVersion"]

    async def _conflicts(self, owner: Owner, wanted: list[Manifest]) -> list[NameConflict]:
        """The wanted children whose name an object that is not the owner's holds."""

        async def check(obj: Manifest) -> NameConflict | None:
            kind = kind_of(obj["apiVersion"], obj["kind"])
            name = obj["metadata"]["name"]
            live = await self.kube.read_metadata(kind, owner.namespace, name)
            if live is None or owns(owner, kind, live):
                return None
            return NameConflict(kind, name)

        found = await asyncio.gather(*(check(obj) for obj in wanted))
        return sorted(c for c in found if c is not None)

    async def _delete_owned(self, owner: Owner, kind: Kind, name: str) -> bool:
        """Delete the child `name` if it exists and is the owner's; True when deleted.

        A child a previous read found absent is not read again until the child watch
        (every child carries the managed-by label it selects) sees an object of its name,
        or the next resync: an unwanted child is usually long gone, and this read is most
        of a steady reconcile's calls otherwise."""
        key = _child_key(kind, owner.namespace, name)
        if key in self._absent:
            return False
        events = self._child_events.get(key, 0)
        live = await self.kube.read_metadata(kind, owner.namespace, name)
        if live is None:
            if self._child_events.get(key, 0) == events:
                self._absent.add(key)
            return False
        if not owns(owner, kind, live):
            return False
        return await self.kube.delete(kind, live)

    async def _secret_problem(self, core: QSysCore, use: str) -> str | None:
        """Why the credentials (use CORE_CREDENTIALS) or TLS Secret (TLS) the core names
        may not be used; the cause goes to the operator's log only."""
        ns = core.metadata.namespace
        if use == TLS:
            name, what = core.spec.gateway.tlsSecretName, "spec.gateway.tlsSecretName"
            if name is None:
                return None
            problem = marker_problem(
                name, await self.kube.read_secret_metadata(ns, name), TLS, what
            )
        else:
            ref = core.spec.core.credentialsSecretRef
            if ref is None:
                return None
            name, what = ref.name, "spec.core.credentialsSecretRef"
            meta = await self.kube.read_secret_metadata(ns, name)
            hosts = [h for h in (core.spec.core.host, core.spec.core.redundantHost) if h]
            allow = self.settings.allow_unbound_credentials
            problem = credentials_problem(name, meta, hosts, allow)
        cause = problem.cause if problem else None
        self._refused(ns, f"QSysCore {core.metadata.name} {what}", name, cause)
        return problem.message if problem else None

    def _refused(self, namespace: str, reference: str, secret: str, cause: str | None) -> None:
        """Log why a named Secret was refused, once per change of cause (no values)."""
        key = (namespace, f"{reference} {secret}")
        if self._refusals.get(key) == cause:
            return
        if cause is None:
            self._refusals.pop(key, None)
            return
        if len(self._refusals) >= MAX_REMEMBERED_REFUSALS:
            self._refusals.clear()
        self._refusals[key] = cause
        log.info(
            "Secret refused",
            extra={
                "namespace": namespace,
                "reference": reference,
                "secret": secret,
                "cause": cause,
            },
        )

    async def _replicas(self, namespace: str, name: str) -> Replicas:
        deployment = await self.kube.read_deployment(namespace, name)
        if deployment is None:
            return Replicas(None)
        status = deployment.status
        spec = deployment.spec
        rolling_out = rollout_progress(
            deployment.metadata.generation if deployment.metadata else None,
            status.observed_generation if status else None,
            spec.replicas if spec and spec.replicas is not None else 1,
            status.replicas if status else None,
            status.updated_replicas if status else None,
        )
        if status is None:
            return Replicas(0, rolling_out=rolling_out)
        return Replicas(
            status.available_replicas or 0, status.ready_replicas or 0, rolling_out=rolling_out
        )

    async def _probe(self, core: QSysCore) -> CoreView:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(core.metadata.name).items())
        target = f"{core.spec.core.host}:{core.spec.core.port}"
        return await probe_core(
            self.kube, self.settings, self._session, core.metadata.namespace, selector, target
        )

    async def _write_policy(
        self,
        policy: AccessPolicy,
        core: QSysCore | None,
        result: RenderResult | None,
        tokens: PolicyTokens,
        not_rendered: str | None = None,
    ) -> None:
        found = PolicyFindings(
            core_ref=policy.spec.coreRef.name,
            namespace=policy.metadata.namespace,
            subjects=len(policy.spec.subjects),
            bound_core=core.metadata.name if core else None,
            conflicts=result.conflicts if result else (),
            token_problems=tokens.problems,
            token_secrets=tokens.secrets,
            service_accounts={
                sub.name: sub.serviceAccount.username(policy.metadata.namespace)
                for sub in policy.spec.subjects
                if sub.serviceAccount is not None
            },
            tokens_in_grace=_grace_of(policy, result),
            not_rendered=not_rendered,
        )
        update = policy_status(
            policy.metadata.name,
            policy.metadata.generation,
            policy.status.model_dump(mode="json"),
            found,
            now(),
        )
        body = {
            "apiVersion": policy.apiVersion,
            "kind": policy.kind,
            "metadata": policy.metadata.model_dump(mode="json"),
        }
        if await self._write(body, AccessPolicy.PLURAL, update):
            self.metrics.reconcile_total.labels(AccessPolicy.KIND, "success").inc()

    async def _write(self, body: dict[str, Any], plural: str, update: StatusUpdate) -> bool:
        """Patch the status when it changed, then post the Events; True when written."""
        meta = body["metadata"]
        written = update.status is not None
        if update.status is not None:
            version = await self.kube.patch_status(
                plural, meta["namespace"], meta["name"], update.status
            )
            key = (plural, meta["namespace"], meta["name"])
            if version is None:
                self._written.pop(key, None)
            else:
                self._written[key] = version

        async def post(type_: str, reason: str, message: str) -> None:
            try:
                await self.kube.event(body, type_, reason, message)
            except Exception as exc:  # Events are best effort
                log.warning("could not post an Event", extra={"error": _describe(exc)})

        await asyncio.gather(*(post(*event) for event in update.events))
        return written


def _namespace(key: Key) -> str:
    return key[0]


def _digest(manifest: Manifest) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def _child_key(kind: Kind, namespace: str | None, name: str) -> ChildKey:
    return (kind.plural, namespace if kind.namespaced else None, name)


def _deployment_replicas(body: Mapping[str, Any]) -> Replicas:
    """Replicas of a Deployment's JSON body as a watch delivers it (rollout included)."""
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    wanted = spec.get("replicas")
    rolling_out = rollout_progress(
        (body.get("metadata") or {}).get("generation"),
        status.get("observedGeneration"),
        wanted if wanted is not None else 1,
        status.get("replicas"),
        status.get("updatedReplicas"),
    )
    return Replicas(
        status.get("availableReplicas") or 0,
        status.get("readyReplicas") or 0,
        rolling_out=rolling_out,
    )


def _spec_version(answer: Mapping[str, Any]) -> tuple[Any, list[str]]:
    meta = answer.get("metadata") or {}
    return meta.get("generation"), sorted(
        str(r.get("uid")) for r in meta.get("ownerReferences") or []
    )


def _holds(live: Mapping[str, Any] | None, wanted: Mapping[str, Any] | None) -> bool:
    """Every key of `wanted` has its value in `live` (others' keys are not the operator's)."""
    return all((live or {}).get(k) == v for k, v in (wanted or {}).items())


def _replicas_of(deployment: dict[str, Any]) -> Replicas:
    """Replicas of a Deployment's JSON body (as an apply answers it)."""
    status = deployment.get("status") or {}
    return Replicas(status.get("availableReplicas") or 0, status.get("readyReplicas") or 0)


def _grace_of(policy: AccessPolicy, result: RenderResult | None) -> dict[str, str]:
    """subject -> end of its grace period, for the policy's subjects the config admits."""
    if result is None:
        return {}
    mine = {s.name for s in policy.spec.subjects}
    return {
        s.name: s.previousTokenUntil.isoformat().replace("+00:00", "Z")
        for s in result.config.subjects
        if s.name in mine and s.previousTokenUntil is not None
    }


def _without_secrets(core: QSysCore, creds: bool, tls: bool) -> QSysCore:
    """The core without the credentials and/or TLS Secret the operator refused."""
    if not creds and not tls:
        return core
    spec = core.spec
    if creds:
        spec = spec.model_copy(
            update={"core": spec.core.model_copy(update={"credentialsSecretRef": None})}
        )
    if tls:
        spec = spec.model_copy(
            update={"gateway": spec.gateway.model_copy(update={"tlsSecretName": None})}
        )
    return core.model_copy(update={"spec": spec})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"API {exc.status}: {api_message(exc)}"
    return f"{type(exc).__name__}: {exc}"
