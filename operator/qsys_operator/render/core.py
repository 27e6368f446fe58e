"""Everything the operator wants to exist for one QSysCore, as plain manifests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qsys_protocol.config import GatewayConfig

from ..api import QSysCore
from ..kinds import (
    CLUSTER_ROLE_BINDING,
    HPA,
    NETWORK_POLICY,
    PDB,
    SERVICE_ACCOUNT,
    SERVICE_MONITOR,
    Kind,
)
from ..settings import OperatorSettings
from .common import Manifest, gateway_name
from .config import gateway_config, render_config_secret, restart_hash, uses_identity
from .deployment import render_deployment
from .hpa import render_hpa
from .identity import (
    render_service_account,
    render_token_review_binding,
    token_review_binding_name,
)
from .networkpolicy import egress_note, render_network_policy
from .pdb import render_pdb
from .service import render_service
from .servicemonitor import render_service_monitor
from .subjects import PolicyBinding, SubjectConflict, UnresolvedSubject, merge_subjects


@dataclass(frozen=True, order=True)
class ChildRef:
    """A child the current spec does not want (the caller deletes it if it exists)."""

    kind: Kind
    name: str


@dataclass(frozen=True)
class RenderResult:
    objects: list[Manifest]
    """ServiceAccount and ClusterRoleBinding when wanted (before the pods that use them),
    Secret, Deployment, Service, then NetworkPolicy, PodDisruptionBudget and
    HorizontalPodAutoscaler when wanted."""
    service_monitor: Manifest | None
    """None when spec.monitoring.serviceMonitor.enabled is false."""
    absent: list[ChildRef]
    """Optional children the spec turned off: NetworkPolicy, PDB, HPA, ServiceMonitor, and
    the gateway's ServiceAccount and ClusterRoleBinding when no subject needs them."""
    conflicts: list[SubjectConflict]
    unresolved: list[UnresolvedSubject]
    """Subjects left out because the caller had no token hash for them."""
    config: GatewayConfig
    subjects: int
    """Subjects in the rendered config (status.subjects)."""
    restart_hash: str
    identity: bool
    """Some subject is a ServiceAccount: the gateway has its own identity (and needs the
    API server's endpoints for its NetworkPolicy)."""
    egress_note: str | None = None
    """Endpoints the core names that its NetworkPolicy cannot let the gateways reach."""


def _add_optional(
    objects: list[Manifest],
    absent: list[ChildRef],
    optional: list[tuple[Manifest | None, Kind]],
    name: str,
) -> None:
    for manifest, kind in optional:
        if manifest is None:
            absent.append(ChildRef(kind, name))
        else:
            objects.append(manifest)


def render_core_children(
    core: QSysCore,
    bindings: list[PolicyBinding],
    settings: OperatorSettings,
    api_server: Sequence[tuple[str, int]] = (),
) -> RenderResult:
    """api_server: (address, port) of the API server's endpoints, read by the caller;
    used only when some subject is a ServiceAccount.

    `objects` is in apply order: what the pods mount or sit behind (config Secret,
    Service, NetworkPolicy, PodDisruptionBudget) before the Deployment, so no gateway pod
    ever runs without its NetworkPolicy; the HPA that scales the Deployment after it."""
    meta = core.metadata
    name = gateway_name(meta.name)
    merged = merge_subjects([b for b in bindings if b.policy.spec.coreRef.name == meta.name])
    config = gateway_config(core, merged.subjects)
    rhash = restart_hash(config)
    identity = uses_identity(merged.subjects)
    objects: list[Manifest] = []
    absent: list[ChildRef] = []
    if identity:
        objects += [render_service_account(core), render_token_review_binding(core, settings)]
    else:
        absent += [
            ChildRef(SERVICE_ACCOUNT, name),
            ChildRef(CLUSTER_ROLE_BINDING, token_review_binding_name(meta.namespace, meta.name)),
        ]
    objects += [render_config_secret(core, config), render_service(core)]
    guards = [
        (
            render_network_policy(
                core,
                settings,
                [c for s in merged.subjects for c in s.sourceCIDRs],
                api_server if identity else (),
            ),
            NETWORK_POLICY,
        ),
        (render_pdb(core), PDB),
    ]
    _add_optional(objects, absent, guards, name)
    objects.append(render_deployment(core, settings, rhash, identity))
    _add_optional(objects, absent, [(render_hpa(core), HPA)], name)
    service_monitor = render_service_monitor(core, settings)
    if service_monitor is None:
        absent.append(ChildRef(SERVICE_MONITOR, name))
    return RenderResult(
        objects=objects,
        service_monitor=service_monitor,
        absent=absent,
        conflicts=merged.conflicts,
        unresolved=merged.unresolved,
        config=config,
        subjects=len(merged.subjects),
        restart_hash=rhash,
        identity=identity,
        egress_note=egress_note(core, settings),
    )
