"""Is an existing object the operator's own child of a core? Decided from its metadata. Pure.

Every child has a fixed name (`<core>-gateway...`) that a tenant picks by naming the
core, so an object of that name may belong to someone else: the platform's Service
`api-gateway`, a ServiceAccount `ops-gateway` bound to `edit`. The operator applies to
and deletes only objects this module calls its own; any other object of a child's name
is left byte-identical and reported as a name conflict.

- A namespaced child is the core's when an ownerReference with `controller: true`
  carries the core's UID (what the operator writes, and what garbage collection
  follows). A core deleted and recreated under the same name has a new UID: the old
  core's children, still being garbage-collected, are not the new core's.
- A cluster-scoped child (the TokenReview ClusterRoleBinding) cannot have a namespaced
  owner. It is the core's when it carries the operator's managed-by label and the
  OWNER_ANNOTATION naming the core's namespace and name. Only those who may write
  ClusterRoleBindings can forge that, and they need no operator to bind anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .kinds import Kind
from .render.common import MANAGED_BY
from .render.identity import OWNER_ANNOTATION, owner_annotation

Metadata = Mapping[str, Any]


@dataclass(frozen=True)
class Owner:
    """The QSysCore whose children are checked. uid is None once the core is gone (only
    cluster-scoped children, which garbage collection does not remove, are then checked)."""

    namespace: str
    name: str
    uid: str | None

    @property
    def annotation(self) -> str:
        return owner_annotation(self.namespace, self.name)


def controlled_by(meta: Metadata, uid: str | None) -> bool:
    """Whether an ownerReference with `controller: true` names the UID."""
    return uid is not None and any(
        ref.get("controller") is True and ref.get("uid") == uid
        for ref in meta.get("ownerReferences") or []
    )


def owns(owner: Owner, kind: Kind, meta: Metadata) -> bool:
    """Whether the existing object of `kind` with metadata `meta` is the owner's child."""
    if kind.namespaced:
        return controlled_by(meta, owner.uid)
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    return (
        labels.get("app.kubernetes.io/managed-by") == MANAGED_BY
        and annotations.get(OWNER_ANNOTATION) == owner.annotation
    )


@dataclass(frozen=True, order=True)
class NameConflict:
    """An object with a child's name that is not the core's: never applied, patched or
    deleted by the operator."""

    kind: Kind
    name: str

    def describe(self) -> str:
        # Says nothing of the object beyond its existence: its labels, owners and
        # contents may be unreadable to whoever reads the core's status.
        return f"{self.kind.kind} {self.name}"


def conflicts_message(conflicts: list[NameConflict]) -> str:
    objects = ", ".join(sorted(c.describe() for c in conflicts))
    one = len(conflicts) == 1
    return (
        f"{objects} already {'exists' if one else 'exist'} and {'was' if one else 'were'} "
        "not created by the operator for this QSysCore: "
        f"{'it is' if one else 'they are'} left untouched, and nothing of this QSysCore is "
        f"applied until {'it is' if one else 'they are'} removed or the QSysCore is renamed"
    )
