"""One reconcile per QSysCore name: children applied, policies bound, status and Events written.

Every trigger (the core, its policies, its children, the resync loop) only marks
the core dirty; one worker per core coalesces bursts and runs reconciles one at
a time. Errors back off exponentially and retry; an object the API server
refuses (a permanent error) is reported in the status with its message instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from .api import AccessPolicy, QSysCore
from .k8s import Kube, api_message, is_permanent, now
from .metrics import OperatorMetrics
from .peering import Peering
from .probe import CoreView, probe_core
from .render import PolicyBinding, RenderResult, gateway_name, render_core_children
from .render.common import selector_labels
from .settings import OperatorSettings
from .status import Cond, event_message, event_type, merge_conditions
from .tokens import PolicyTokens, resolve_tokens

log = logging.getLogger("qsys_operator.reconcile")

Key = tuple[str, str]
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
MAX_BACKOFF_S = 60.0
MAX_CONCURRENT_RECONCILES = 12


@dataclass
class Outcome:
    """What a reconcile found, for the status."""

    result: RenderResult | None = None
    apply_error: str | None = None
    service_monitor_note: str | None = None
    tokens: dict[str, PolicyTokens] = field(default_factory=dict)


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
        self._pending: set[Key] = set()
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._backoff: dict[Key, float] = {}
        self._policy_cores: dict[Key, str] = {}
        self._cores: set[Key] = set()
        self._sm_served: bool | None = None
        self._session: aiohttp.ClientSession | None = None
        self._policy_lists: dict[str, tuple[int, asyncio.Task[list[dict[str, Any]]]]] = {}
        # API calls run on a handful of worker threads anyway; bounding reconciles in
        # flight keeps a burst of hundreds of cores from holding hundreds of half-done
        # renders and responses in memory at once.
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_RECONCILES)

    # ---- triggers ------------------------------------------------------------

    def trigger(self, namespace: str, core: str) -> None:
        key = (namespace, core)
        self._pending.add(key)
        task = self._tasks.get(key)
        if task is None or task.done():
            self._tasks[key] = asyncio.get_running_loop().create_task(self._work(key))

    def policy_seen(self, namespace: str, policy: str, core: str | None) -> None:
        """A policy event: re-render its core, and the one it left when coreRef changed."""
        old = self._policy_cores.get((namespace, policy))
        if core is None:
            self._policy_cores.pop((namespace, policy), None)
        else:
            self._policy_cores[(namespace, policy)] = core
            self.trigger(namespace, core)
        if old and old != core:
            self.trigger(namespace, old)

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

    def service_monitor_crd_changed(self) -> None:
        self._sm_served = None
        for ns, name in list(self._cores):
            self.trigger(ns, name)

    def core_deleted(self, namespace: str, core: str) -> None:
        self._cores.discard((namespace, core))
        self.metrics.managed_cores.set(len(self._cores))
        self.trigger(namespace, core)  # its policies become unbound

    async def resync(self) -> None:
        """Trigger every core (and every core name a policy refers to) in the watched namespaces."""
        if not await self.peering.active():
            return
        namespaces: list[str | None] = list(self.settings.watch_namespaces) or [None]
        for ns in namespaces:
            for core in await self.kube.list_custom("qsyscores", ns):
                meta = core["metadata"]
                self.trigger(meta["namespace"], meta["name"])
            for pol in await self.kube.list_custom("accesspolicies", ns):
                ref = (pol.get("spec") or {}).get("coreRef") or {}
                if ref.get("name"):
                    self.trigger(pol["metadata"]["namespace"], ref["name"])

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        if self._session is not None:
            await self._session.close()

    # ---- worker ----------------------------------------------------------------

    async def _work(self, key: Key) -> None:
        while key in self._pending:
            self._pending.discard(key)
            try:
                if not await self.peering.active():
                    continue
                async with self._slots:
                    await self.reconcile(*key)
                self._backoff.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = min(MAX_BACKOFF_S, self._backoff.get(key, 0.5) * 2)
                self._backoff[key] = delay
                self.metrics.reconcile_total.labels("QSysCore", "error").inc()
                log.warning(
                    "reconcile failed; retrying",
                    extra={
                        "namespace": key[0],
                        "core": key[1],
                        "error": _describe(exc),
                        "retryInSeconds": delay,
                    },
                )
                await asyncio.sleep(delay)
                self._pending.add(key)

    # ---- the reconcile -----------------------------------------------------------

    async def reconcile(self, namespace: str, name: str) -> None:
        started = time.monotonic()
        since = time.monotonic_ns()
        body = await self.kube.get_core(namespace, name)
        policies = await self._policies(namespace, name, since)
        outcome = Outcome()
        for policy in policies:
            outcome.tokens[policy.metadata.name] = await resolve_tokens(self.kube, policy)
        if body is None:
            self._cores.discard((namespace, name))
            self.metrics.managed_cores.set(len(self._cores))
            for policy in policies:
                await self._policy_status(policy, None, outcome)
            return
        self._cores.add((namespace, name))
        self.metrics.managed_cores.set(len(self._cores))
        try:
            core = QSysCore.model_validate(body)
        except ValidationError as exc:
            # The CRD schema should have refused it; say what is wrong and wait for a fix.
            await self._core_invalid(body, str(exc.errors(include_input=False)[:3]))
            self.metrics.reconcile_total.labels("QSysCore", "permanent_error").inc()
            return
        bindings = [PolicyBinding(p, outcome.tokens[p.metadata.name].hashes) for p in policies]
        outcome.result = render_core_children(core, bindings, self.settings)
        await self._apply(core, outcome)
        await self._core_status(core, body, outcome)
        for policy in policies:
            await self._policy_status(policy, core, outcome)
        result = "permanent_error" if outcome.apply_error else "success"
        self.metrics.reconcile_total.labels("QSysCore", result).inc()
        self.metrics.reconcile_duration.labels("QSysCore").observe(time.monotonic() - started)

    async def _list_policies(self, namespace: str, since: int) -> list[dict[str, Any]]:
        """The namespace's AccessPolicies as listed by a call sent after `since`.

        Reconciles running at once share one list call (instead of one each, which is
        quadratic with many cores and policies), but only a call sent after the reconcile
        started, so none reads data older than what triggered it.
        """
        entry = self._policy_lists.get(namespace)
        if entry is None or entry[0] <= since:
            task = asyncio.get_running_loop().create_task(
                self.kube.list_custom("accesspolicies", namespace)
            )
            entry = (time.monotonic_ns(), task)
            self._policy_lists[namespace] = entry
        return await asyncio.shield(entry[1])

    async def _policies(self, namespace: str, core: str, since: int) -> list[AccessPolicy]:
        out = []
        for raw in await self._list_policies(namespace, since):
            if ((raw.get("spec") or {}).get("coreRef") or {}).get("name") != core:
                continue
            try:
                out.append(AccessPolicy.model_validate(raw))
            except ValidationError:
                log.warning(
                    "AccessPolicy does not match the schema; ignored",
                    extra={"namespace": namespace, "policy": raw["metadata"]["name"]},
                )
        return out

    async def _service_monitor_served(self) -> bool:
        if self._sm_served is None:
            self._sm_served = await self.kube.crd_served(SERVICE_MONITOR_CRD, "v1")
        return self._sm_served

    async def _apply(self, core: QSysCore, outcome: Outcome) -> None:
        result = outcome.result
        assert result is not None
        ns = core.metadata.namespace
        current: dict[str, Any] = {}
        try:
            for obj in result.objects:
                current = obj
                await self.kube.apply(obj)
            served = await self._service_monitor_served()
            if result.service_monitor is not None:
                if served:
                    current = result.service_monitor
                    await self.kube.apply(result.service_monitor)
                else:
                    outcome.service_monitor_note = (
                        "ServiceMonitor not created: the cluster does not serve "
                        "monitoring.coreos.com/v1 (install the Prometheus Operator CRDs)"
                    )
            for ref in result.absent:
                if ref.kind == "ServiceMonitor" and not served:
                    continue
                await self.kube.delete(ref.api_version, ref.kind, ns, ref.name)
        except ApiException as exc:
            if not is_permanent(exc):
                raise
            what = f"{current.get('kind')} {current.get('metadata', {}).get('name')}"
            outcome.apply_error = f"{what} refused by the API server: {api_message(exc)}"

    # ---- status -------------------------------------------------------------------

    async def _core_invalid(self, body: dict[str, Any], problem: str) -> None:
        meta = body["metadata"]
        old = body.get("status") or {}
        conds, transitions = merge_conditions(
            old.get("conditions") or [],
            [Cond("Ready", "False", "InvalidSpec", f"fix the spec: {problem}")],
            meta.get("generation"),
            now(),
        )
        await self.kube.patch_status(
            "qsyscores", meta["namespace"], meta["name"], {"conditions": conds}
        )
        for t in transitions:
            await self._event(body, event_type(t), t.new.reason, event_message(t))

    async def _core_status(self, core: QSysCore, body: dict[str, Any], outcome: Outcome) -> None:
        result = outcome.result
        assert result is not None
        ns, name = core.metadata.namespace, core.metadata.name
        gw_name = gateway_name(name)
        deployment = await self.kube.read_deployment(ns, gw_name)
        available = ready = 0
        if deployment is not None and deployment.status is not None:
            available = deployment.status.available_replicas or 0
            ready = deployment.status.ready_replicas or 0
        wanted = core.spec.gateway.replicas
        if core.spec.gateway.autoscaling is not None:  # the HPA's current choice
            live = deployment.spec.replicas if deployment and deployment.spec else None
            wanted = live or core.spec.gateway.min_replicas
        if deployment is None:
            gw_cond = Cond("GatewayAvailable", "False", "DeploymentMissing", f"{gw_name} not found")
        elif available >= 1:
            gw_cond = Cond(
                "GatewayAvailable", "True", "ReplicasAvailable", f"{available}/{wanted} available"
            )
        else:
            gw_cond = Cond(
                "GatewayAvailable", "False", "NoReplicaAvailable", f"0/{wanted} available"
            )
        view = await self._probe(core)
        old = body.get("status") or {}
        old_core = old.get("core") or {}
        core_status: dict[str, Any] = {
            "state": None,
            "designName": old_core.get("designName"),
            "platform": old_core.get("platform"),
            "lastSeen": old_core.get("lastSeen"),
        }
        if view.engine is not None:
            core_status = {
                "state": view.engine.get("State"),
                "designName": view.engine.get("DesignName"),
                "platform": view.engine.get("Platform"),
                "lastSeen": now(),
            }
        elif view.condition.status == "False":
            core_status["state"] = "Unreachable"
        ready_cond = _ready(outcome, gw_cond, view.condition)
        stamp = now()
        conds, transitions = merge_conditions(
            old.get("conditions") or [],
            [ready_cond, gw_cond, view.condition],
            core.metadata.generation,
            stamp,
        )
        status = {
            "observedGeneration": core.metadata.generation,
            "conditions": conds,
            "gateway": {"readyReplicas": ready, "service": gw_name},
            "core": core_status,
            "subjects": result.subjects,
        }
        if _without_seen(status) != _without_seen(old):
            await self.kube.patch_status("qsyscores", ns, name, status)
        for t in transitions:
            await self._event(body, event_type(t), t.new.reason, event_message(t))
        old_ready: dict[str, Any] = next(
            (c for c in old.get("conditions") or [] if c.get("type") == "Ready"), {}
        )
        note = outcome.service_monitor_note
        if note and note not in str(old_ready.get("message", "")):
            await self._event(body, "Normal", "ServiceMonitorSkipped", note)

    async def _probe(self, core: QSysCore) -> CoreView:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(core.metadata.name).items())
        target = f"{core.spec.core.host}:{core.spec.core.port}"
        return await probe_core(
            self.kube, self.settings, self._session, core.metadata.namespace, selector, target
        )

    async def _policy_status(
        self, policy: AccessPolicy, core: QSysCore | None, outcome: Outcome
    ) -> None:
        pname = policy.metadata.name
        tokens = outcome.tokens[pname]
        problems: list[str] = []
        if core is None:
            bound = Cond(
                "Bound",
                "False",
                "CoreNotFound",
                f"QSysCore {policy.spec.coreRef.name} not found in namespace "
                f"{policy.metadata.namespace}; create it or fix spec.coreRef.name",
            )
        else:
            bound = Cond("Bound", "True", "CoreFound", f"bound to QSysCore {core.metadata.name}")
            result = outcome.result
            assert result is not None
            for c in result.conflicts:
                if c.policy == pname:
                    problems.append(
                        f"subject {c.subject} left out: {c.reason} "
                        f"(kept by AccessPolicy {c.kept_by})"
                    )
        problems.extend(f"subject {s}: {msg}" for s, msg in sorted(tokens.problems.items()))
        if core is None:
            ready = Cond("Ready", "False", "CoreNotFound", bound.message)
        elif problems:
            reason = "SubjectConflict" if any("left out" in p for p in problems) else "TokenProblem"
            ready = Cond("Ready", "False", reason, "; ".join(problems))
        else:
            ready = Cond(
                "Ready", "True", "Rendered", f"{len(policy.spec.subjects)} subject(s) active"
            )
        old = policy.status.model_dump(mode="json")
        conds, transitions = merge_conditions(
            old.get("conditions") or [], [ready, bound], policy.metadata.generation, now()
        )
        status = {
            "observedGeneration": policy.metadata.generation,
            "conditions": conds,
            "tokenSecrets": dict(sorted(tokens.secrets.items())),
        }
        changed = _strip_none(status) != _strip_none(
            {k: old.get(k) for k in ("observedGeneration", "conditions", "tokenSecrets")}
        )
        if changed:
            await self.kube.patch_status("accesspolicies", policy.metadata.namespace, pname, status)
            self.metrics.reconcile_total.labels("AccessPolicy", "success").inc()
        body = {
            "apiVersion": policy.apiVersion,
            "kind": policy.kind,
            "metadata": policy.metadata.model_dump(mode="json"),
        }
        for t in transitions:
            await self._event(body, event_type(t), t.new.reason, event_message(t))

    async def _event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            await self.kube.event(body, type_, reason, message)
        except Exception as exc:  # Events are best effort
            log.warning("could not post an Event", extra={"error": _describe(exc)})


def _ready(outcome: Outcome, gateway: Cond, core: Cond) -> Cond:
    note = f"; {outcome.service_monitor_note}" if outcome.service_monitor_note else ""
    if outcome.apply_error:
        return Cond("Ready", "False", "ApplyRejected", outcome.apply_error + note)
    if gateway.status != "True":
        return Cond("Ready", "False", "GatewayUnavailable", gateway.message + note)
    if core.status == "False" or (core.status == "Unknown" and core.reason != "ProbeDisabled"):
        return Cond("Ready", "False", "CoreNotConnected", core.message + note)
    return Cond("Ready", "True", "Ready", "gateway available and connected to the Core" + note)


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None and v != {}}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def _without_seen(status: dict[str, Any]) -> Any:
    """Status without core.lastSeen (refreshed on every probe; not worth a write on its own)."""
    out = _strip_none(
        {
            k: status.get(k)
            for k in ("observedGeneration", "conditions", "gateway", "core", "subjects")
        }
    )
    if isinstance(out.get("core"), dict):
        out["core"] = {k: v for k, v in out["core"].items() if k != "lastSeen"}
    return out


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"API {exc.status}: {api_message(exc)}"
    return f"{type(exc).__name__}: {exc}"
