"""AccessPolicy: subjects (token holders) and the rules they get on one QSysCore."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from qsys_protocol.config import MAX_SOURCE_CIDRS, RateConfig, Rule
from qsys_protocol.config import SourceCIDR as GatewaySourceCIDR

from .common import (
    API_VERSION,
    DNS_LABEL_PATTERN,
    Conditions,
    LocalObjectReference,
    Model,
    ObjectMeta,
    ObjectName,
    SecretKey,
    StatusModel,
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
    "self.spec.subjects.all(s, has(s.tokenSecretRef) || "
    "size(self.metadata.name) + size(s.name) + 7 <= 253)",
    "the generated Secret name <policy>-<subject>-token must not exceed 253 characters",
)


SourceCIDR = Annotated[
    GatewaySourceCIDR,
    Field(
        json_schema_extra=validations(
            cel("isCIDR(self)", "must be a CIDR, e.g. 192.0.2.10/32"),
            cel(
                "!isCIDR(self) || cidr(self) == cidr(self).masked()",
                "must have no host bits set, e.g. 192.0.2.0/28 rather than 192.0.2.1/28",
            ),
            cel(
                "!isCIDR(self) || cidr(self).prefixLength() > 0",
                "must not be a default route (/0): that would admit every address",
            ),
        )
    ),
]
"""Validated twice: by the API server (CEL) and by the model (ipaddress), so a bad
value is refused at `kubectl apply` and can never reach a gateway config."""

SUBJECT_CREDENTIAL_RULE = cel(
    "!(has(self.tokenSecretRef) && has(self.sourceCIDRs))",
    "a subject authenticates with a token or by sourceCIDRs, not both",
)


class TokenSecretRef(Model):
    name: ObjectName
    key: SecretKey = "token"


class Subject(Model):
    model_config = ConfigDict(json_schema_extra=validations(SUBJECT_CREDENTIAL_RULE))

    name: SubjectName
    tokenSecretRef: TokenSecretRef | None = None
    sourceCIDRs: (
        Annotated[list[SourceCIDR], Field(min_length=1, max_length=MAX_SOURCE_CIDRS)] | None
    ) = None
    """Raw QRC clients that cannot Logon: admitted as this subject by their source
    address (no token is generated). See docs/policy.md for the spoofing risk."""


class AccessPolicySpec(Model):
    coreRef: LocalObjectReference
    subjects: Annotated[
        list[Subject],
        Field(min_length=1, max_length=MAX_SUBJECTS, json_schema_extra=list_map("name")),
    ]
    rules: Annotated[
        list[Rule], Field(max_length=MAX_RULES, json_schema_extra=validations(VALUE_RANGE_RULE))
    ] = []
    rateLimit: RateConfig | None = None


class AccessPolicyStatus(StatusModel):
    observedGeneration: int | None = None
    conditions: Conditions = []
    tokenSecrets: dict[str, str] = {}


class AccessPolicy(BaseModel):
    """The whole resource as the API server returns it (e.g. a Kopf body)."""

    model_config = ConfigDict(
        extra="ignore",
        populate_by_name=True,
        json_schema_extra=validations(TOKEN_SECRET_NAME_RULE),
    )

    KIND: ClassVar[str] = "AccessPolicy"
    PLURAL: ClassVar[str] = "accesspolicies"

    apiVersion: Literal["qsys.dev/v1alpha1"] = API_VERSION  # type: ignore[assignment]
    kind: Literal["AccessPolicy"] = "AccessPolicy"
    metadata: ObjectMeta
    spec: AccessPolicySpec
    status: AccessPolicyStatus = AccessPolicyStatus()
