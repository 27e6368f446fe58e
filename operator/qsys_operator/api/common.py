"""Shared building blocks of the custom resource models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

GROUP = "qsys.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

SECRET_TYPE_LABEL = f"{GROUP}/secret-type"
"""The opt-in marker: the operator uses a Secret a resource names only when its owner set
this label to the use (see docs/security.md), as Argo CD does with its secret-type label."""
CORE_CREDENTIALS = "core-credentials"
CLIENT_TOKEN = "client-token"  # noqa: S105 - a label value
TLS = "tls"
CORE_HOSTS_ANNOTATION = f"{GROUP}/core-hosts"
"""Optional on a credentials Secret: the only core.host values it may be sent to."""

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
NamespaceName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
SecretKey = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
Timestamp = Annotated[str, Field(max_length=64, json_schema_extra={"format": "date-time"})]


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


PRESERVE_UNKNOWN: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
"""A Kubernetes core type passed through unchanged (its own schema is the API server's)."""


def list_map(*keys: str) -> dict[str, Any]:
    """A list whose items are unique by keys (the API server enforces it)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


class Model(BaseModel):
    """Spec models reject unknown fields, as the structural schema prunes them."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


class StatusModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, use_attribute_docstrings=True)


class LocalObjectReference(Model):
    name: ObjectName
    """Name of an object in the same namespace."""


class Condition(StatusModel):
    """metav1.Condition."""

    type: Annotated[str, Field(min_length=1, max_length=316)]
    """Condition type, e.g. Ready."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    observedGeneration: Annotated[int, Field(ge=0)] | None = None
    """The `metadata.generation` the condition was set for."""
    lastTransitionTime: Timestamp
    """When `status` last changed (RFC 3339)."""
    reason: Annotated[str, Field(min_length=1, max_length=1024)]
    """One CamelCase word for machines, e.g. CoreUnreachable."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """What happened and what to do, for humans."""


Conditions = Annotated[list[Condition], Field(max_length=16, json_schema_extra=list_map("type"))]


class ObjectMeta(BaseModel):
    """The parts of metav1.ObjectMeta the renderers read; everything else is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str
    namespace: str = "default"
    uid: str = ""
    generation: int | None = None
    creationTimestamp: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
