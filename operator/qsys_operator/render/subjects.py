"""Merge the subjects of every AccessPolicy bound to one Core; report, never merge, duplicates.

Precedence: policies are ordered by creationTimestamp (oldest first), then by
name. The first policy to declare a subject name keeps it; a later policy's
subject of the same name is left out and reported. The same holds for a token
hash that two subjects share, and for a source-bound subject whose sourceCIDRs
overlap an earlier one's (the gateway could not tell them apart).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from qsys_protocol.config import SubjectConfig, overlapping_sources

from ..api import AccessPolicy


@dataclass(frozen=True)
class PolicyBinding:
    """An AccessPolicy bound to the Core, with its subjects' token hashes resolved by the caller."""

    policy: AccessPolicy
    token_hashes: Mapping[str, str] = field(default_factory=dict)
    """subject name -> HMAC-SHA256 hex of its token (under the core's token key); a subject
    missing here is left out."""


@dataclass(frozen=True, order=True)
class SubjectConflict:
    subject: str
    policy: str
    """The policy whose subject was left out."""
    kept_by: str
    """The policy that keeps the name (or the token)."""
    reason: Literal["duplicate-name", "duplicate-token", "overlapping-source"]


@dataclass(frozen=True, order=True)
class UnresolvedSubject:
    policy: str
    subject: str


@dataclass(frozen=True)
class MergedSubjects:
    subjects: list[SubjectConfig]
    conflicts: list[SubjectConflict]
    unresolved: list[UnresolvedSubject]


def precedence(policy: AccessPolicy) -> tuple[str, str]:
    # RFC 3339 UTC timestamps from the API server sort as strings; a policy not
    # yet persisted (no timestamp) sorts last.
    return (policy.metadata.creationTimestamp or "~", policy.metadata.name)


def merge_subjects(bindings: list[PolicyBinding]) -> MergedSubjects:
    names: dict[str, str] = {}
    hashes: dict[str, str] = {}
    subjects: list[SubjectConfig] = []
    conflicts: list[SubjectConflict] = []
    unresolved: list[UnresolvedSubject] = []
    for binding in sorted(bindings, key=lambda b: precedence(b.policy)):
        policy = binding.policy
        pname = policy.metadata.name
        for subject in policy.spec.subjects:
            if subject.name in names:
                conflicts.append(
                    SubjectConflict(subject.name, pname, names[subject.name], "duplicate-name")
                )
                continue
            if subject.sourceCIDRs:
                bound = SubjectConfig(
                    name=subject.name,
                    sourceCIDRs=subject.sourceCIDRs,
                    rate=policy.spec.rateLimit,
                    rules=list(policy.spec.rules),
                )
                clash = overlapping_sources([*subjects, bound])
                if clash is not None:
                    conflicts.append(
                        SubjectConflict(subject.name, pname, names[clash[0]], "overlapping-source")
                    )
                    continue
                names[subject.name] = pname
                subjects.append(bound)
                continue
            token = binding.token_hashes.get(subject.name)
            if token is None:
                unresolved.append(UnresolvedSubject(pname, subject.name))
                continue
            if token in hashes:
                conflicts.append(
                    SubjectConflict(subject.name, pname, hashes[token], "duplicate-token")
                )
                continue
            names[subject.name] = pname
            hashes[token] = pname
            subjects.append(
                SubjectConfig(
                    name=subject.name,
                    tokenHmacSha256=token,
                    rate=policy.spec.rateLimit,
                    rules=list(policy.spec.rules),
                )
            )
    subjects.sort(key=lambda s: s.name)
    return MergedSubjects(subjects, sorted(conflicts), sorted(unresolved))
