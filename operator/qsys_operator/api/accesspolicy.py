"""AccessPolicy: subjects (token holders) and the rules they get on one QSysCore."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qsys_protocol.config import MAX_SOURCE_CIDRS, RateConfig, Rule
from qsys_protocol.config import SourceCIDR as GatewaySourceCIDR

from .common import (
    API_VERSION,
    DNS_LABEL_PATTERN,
    Conditions,
    LocalObjectReference,
    Model,
    NamespaceName,
    ObjectMeta,
    ObjectName,
    SecretKey,
    StatusModel,
    Timestamp,
    cel,
    list_map,
    validations,
)

SubjectName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
"""A DNS label: it names the generated Secret `<policy>-<subject>-token`."""

MAX_SUBJECTS = 128
MAX_RULES = 128

VALUE_RANGE_RULE = cel(
    "self.all(r, !has(r.valueRange) || !has(r.valueRange.min) || !has(r.valueRange.max) "
    "|| r.valueRange.min <= r.valueRange.max)",
    "valueRange.min must not be greater than valueRange.max",
)
TOKEN_SECRET_NAME_RULE = cel(
    "self.spec.subjects.all(s, has(s.tokenSecretRef) || has(s.serviceAccount) || "
    "size(self.metadata.name) + size(s.name) + 7 <= 253)",
    "the generated Secret name <policy>-<subject>-token must not exceed 253 characters",
)


@dataclass(frozen=True)
class SourceLimit:
    min_prefix: int
    """No network of a subject may be wider than this prefix length."""
    max_addresses: int
    """Addresses the source-bound subjects of one core may cover together."""


SOURCE_LIMITS = {4: SourceLimit(24, 4096), 6: SourceLimit(64, 16 << 64)}
"""Per address family. A source-bound subject has no secret: its address is the
credential, so every address it covers can act as it (docs/security.md). The widest
network is one LAN segment (an IPv4 /24, an IPv6 /64: one broadcast domain, where ARP/NDP
takeover is the risk that remains anyway); a core's subjects together cover at most 16
such segments (4,096 IPv4 addresses, 16 /64s). Legacy controllers have fixed addresses
and are best bound as /32 or /128; the halves `0.0.0.0/1` + `128.0.0.0/1` (or any set
that adds up to "everyone") are refused."""

SOURCE_PREFIX_RULE = cel(
    "!isCIDR(self) || cidr(self).prefixLength() >= "
    f"(cidr(self).ip().family() == 4 ? {SOURCE_LIMITS[4].min_prefix} "
    f": {SOURCE_LIMITS[6].min_prefix})",
    f"must be no wider than /{SOURCE_LIMITS[4].min_prefix} (IPv4) or "
    f"/{SOURCE_LIMITS[6].min_prefix} (IPv6): bind the controllers' own addresses, "
    "e.g. 192.0.2.40/32",
)


def source_width_problem(cidr: str) -> str | None:
    """The Python twin of SOURCE_PREFIX_RULE (the operator applies it to objects stored
    before the rule too)."""
    network = ipaddress.ip_network(cidr, strict=False)
    limit = SOURCE_LIMITS[network.version].min_prefix
    if network.prefixlen < limit:
        return f"{cidr} is wider than /{limit}"
    return None


SourceCIDR = Annotated[
    GatewaySourceCIDR,
    Field(
        json_schema_extra=validations(
            cel("isCIDR(self)", "must be a CIDR, e.g. 192.0.2.10/32"),
            # Compared as text: Kubernetes 1.31 estimates masked() on a CIDR value so high
            # that `cidr(self) == cidr(self).masked()` exceeds the CRD's cost budget.
            cel(
                "!isCIDR(self) || string(cidr(self).masked()) == self",
                "must be a network written canonically with no host bits set, e.g. "
                "192.0.2.0/28 rather than 192.0.2.1/28, 2001:db8::/64 rather than 2001:DB8::/64",
            ),
            SOURCE_PREFIX_RULE,
        )
    ),
]
"""Validated twice: by the API server (CEL) and by the model (ipaddress), so a bad
value is refused at `kubectl apply` and can never reach a gateway config. The width
bounds are checked again by the operator for the whole core (`source_limit_problem`)."""

SUBJECT_CREDENTIAL_RULE = cel(
    "!(has(self.tokenSecretRef) && has(self.sourceCIDRs))",
    "a subject authenticates with a token or by sourceCIDRs, not both",
)
SUBJECT_SERVICE_ACCOUNT_RULE = cel(
    "!(has(self.serviceAccount) && (has(self.tokenSecretRef) || has(self.sourceCIDRs)))",
    "a serviceAccount subject authenticates with its pod's projected token: "
    "set no tokenSecretRef or sourceCIDRs",
)


class TokenSecretRef(Model):
    name: ObjectName
    """Secret (same namespace) holding the token; it must carry the label
    `qsys.dev/secret-type: client-token`."""
    key: SecretKey = "token"
    """Key of the token in the Secret."""


class ServiceAccountRef(Model):
    name: ObjectName
    """Name of the ServiceAccount."""
    namespace: NamespaceName | None = None
    """Namespace of the ServiceAccount. Unset: the AccessPolicy's own namespace."""

    def username(self, default_namespace: str) -> str:
        """The user name a TokenReview of its tokens returns."""
        return f"system:serviceaccount:{self.namespace or default_namespace}:{self.name}"


class Subject(Model):
    model_config = ConfigDict(
        json_schema_extra=validations(SUBJECT_CREDENTIAL_RULE, SUBJECT_SERVICE_ACCOUNT_RULE)
    )

    name: SubjectName
    """Subject name (DNS label, max 63): appears in audit lines and metrics and names the
    generated Secret `<policy>-<subject>-token`."""
    tokenSecretRef: TokenSecretRef | None = None
    """Bring your own token (at least 32 characters). Unset (and no `sourceCIDRs` or
    `serviceAccount`): the operator generates one into `<policy>-<subject>-token`, key `token`."""
    sourceCIDRs: (
        Annotated[list[SourceCIDR], Field(min_length=1, max_length=MAX_SOURCE_CIDRS)] | None
    ) = None
    """Raw QRC clients that cannot Logon: admitted as this subject by their source
    address (no token is generated). Each network at most a /24 (IPv4) or /64 (IPv6); the
    subjects of one core together at most 4,096 IPv4 addresses and 16 IPv6 /64s (more is
    left out and reported). See docs/security.md for the spoofing risk."""
    serviceAccount: ServiceAccountRef | None = None
    """In-cluster clients: pods running as this ServiceAccount present their projected
    ServiceAccount token (audience: the QSysCore's `status.gateway.serviceAccountAudience`)
    as the bearer token and are admitted as this subject after a TokenReview; no token
    Secret is generated. Excludes `tokenSecretRef` and `sourceCIDRs`. See docs/security.md."""

    @model_validator(mode="after")
    def _one_credential(self) -> Subject:
        """The Python twin of the CEL rules on credentials."""
        if self.tokenSecretRef is not None and self.sourceCIDRs:
            raise ValueError(SUBJECT_CREDENTIAL_RULE["message"])
        if self.serviceAccount is not None and (self.tokenSecretRef or self.sourceCIDRs):
            raise ValueError(SUBJECT_SERVICE_ACCOUNT_RULE["message"])
        return self

    @property
    def uses_token(self) -> bool:
        """Authenticates with a token (generated or bring-your-own) held in a Secret."""
        return not self.sourceCIDRs and self.serviceAccount is None


class AccessPolicySpec(Model):
    coreRef: LocalObjectReference
    """The QSysCore (same namespace) whose gateways admit these subjects."""
    subjects: Annotated[
        list[Subject],
        Field(min_length=1, max_length=MAX_SUBJECTS, json_schema_extra=list_map("name")),
    ]
    """Clients: token holders, source-bound raw QRC clients or ServiceAccounts (1-128, unique
    by name across every policy of the Core; the oldest policy keeps a name)."""
    rules: Annotated[
        list[Rule], Field(max_length=MAX_RULES, json_schema_extra=validations(VALUE_RANGE_RULE))
    ] = []
    """Allow rules shared by every subject of this policy (max 128). Empty: every call is denied."""
    rateLimit: RateConfig | None = None
    """Per-subject rate for these subjects. Unset: the QSysCore's `limits`."""
    tokenGracePeriodSeconds: Annotated[int, Field(ge=0, le=86400)] = 300
    """Seconds a subject's previous token stays valid after its token changes (rotation),
    so connected panels keep working while they are re-keyed; their connections are
    closed when it ends. 0: the old token is refused at once."""


class AccessPolicyStatus(StatusModel):
    observedGeneration: int | None = None
    """The `metadata.generation` this status describes."""
    conditions: Conditions = []
    """Bound (the core exists) and Ready (every subject is in the gateway config),
    metav1.Condition."""
    tokenSecrets: dict[str, str] = {}
    """Subject name to the name of the Secret holding its token (never the token)."""
    serviceAccounts: dict[str, str] = {}
    """Subject name to the Kubernetes user its pods authenticate as, e.g.
    `system:serviceaccount:av:room-scheduler`."""
    tokensInGrace: dict[str, Timestamp] = {}
    """Subjects whose previous token is still admitted after a rotation, and until when
    (RFC 3339)."""


class AccessPolicy(BaseModel):
    """The whole resource as the API server returns it (e.g. a Kopf body)."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        extra="ignore",
        populate_by_name=True,
        json_schema_extra=validations(TOKEN_SECRET_NAME_RULE),
    )

    KIND: ClassVar[str] = "AccessPolicy"
    PLURAL: ClassVar[str] = "accesspolicies"
    CORE_REF_FIELD: ClassVar[str] = "spec.coreRef.name"
    """A selectable field of the CRD: lists select a core's policies by it."""
    DESCRIPTION: ClassVar[str] = (
        "Subjects (token holders) and the calls they may make on one QSysCore: deny by "
        "default, allow rules by method, component, control and value range."
    )

    apiVersion: Literal["qsys.dev/v1alpha1"] = API_VERSION  # type: ignore[assignment]
    kind: Literal["AccessPolicy"] = "AccessPolicy"
    metadata: ObjectMeta
    spec: AccessPolicySpec
    """The subjects, the Core they may use and their rules."""
    status: AccessPolicyStatus = AccessPolicyStatus()
    """Written by the operator: binding to the Core, subjects admitted, token Secrets."""
