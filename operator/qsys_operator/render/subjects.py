"""Merge the subjects of every AccessPolicy bound to one Core; report, never merge, duplicates.

Precedence: policies are ordered by creationTimestamp (oldest first), then by
name. The first policy to declare a subject name keeps it; a later policy's
subject of the same name is left out and reported. The same holds for a token
hash that two subjects share, for a source-bound subject whose sourceCIDRs
overlap an earlier one's, and for a ServiceAccount two subjects name (the gateway
could not tell them apart). A source-bound subject is also left out when one of its
networks is wider than SOURCE_LIMITS allows, or when it would take the networks of the
core's subjects together past their limit (earlier subjects keep their share).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from qsys_protocol.config import SubjectConfig, overlapping_sources

from ..api import AccessPolicy
from ..api.accesspolicy import SOURCE_LIMITS, Subject, source_width_problem


@dataclass(frozen=True)
class PolicyBinding:
    """An AccessPolicy bound to the Core, with its subjects' token hashes resolved by the caller."""

    policy: AccessPolicy
    token_hashes: Mapping[str, str] = field(default_factory=dict)
    previous: Mapping[str, Grace] = field(default_factory=dict)
    """subject name -> its previous token hash and the end of its grace period."""
    """subject name -> HMAC-SHA256 hex of its token (under the core's token key); a subject
    missing here is left out."""


@dataclass(frozen=True)
class Grace:
    token_hash: str
    until: dt.datetime


def grace_periods(
    policy: AccessPolicy,
    token_hashes: Mapping[str, str],
    rendered: Sequence[SubjectConfig],
    now: dt.datetime,
) -> dict[str, Grace]:
    """Rotation grace periods of the policy's subjects, from what the gateways run now.

    A subject whose keyed hash differs from the rendered one was just rotated: its
    rendered hash stays admitted for `tokenGracePeriodSeconds` from `now`. A grace
    period already rendered for an unchanged token is kept until it ends, so rendering
    again gives the same config."""
    seconds = policy.spec.tokenGracePeriodSeconds
    before = {s.name: s for s in rendered}
    out: dict[str, Grace] = {}
    for subject in policy.spec.subjects:
        new, old = token_hashes.get(subject.name), before.get(subject.name)
        if new is None or old is None or old.tokenHmacSha256 is None:
            continue
        if old.tokenHmacSha256 != new:
            if seconds > 0:
                until = now + dt.timedelta(seconds=seconds)
                out[subject.name] = Grace(old.tokenHmacSha256, until.replace(microsecond=0))
        elif (
            old.previousTokenHmacSha256
            and old.previousTokenUntil
            and old.previousTokenUntil > now
            and seconds > 0
        ):
            out[subject.name] = Grace(old.previousTokenHmacSha256, old.previousTokenUntil)
    return out


@dataclass(frozen=True, order=True)
class SubjectConflict:
    subject: str
    policy: str
    """The policy whose subject was left out."""
    kept_by: str
    """The policy that keeps the name (or the token); empty for the source limits."""
    reason: Literal[
        "duplicate-name",
        "duplicate-token",
        "overlapping-source",
        "duplicate-service-account",
        "source-too-wide",
        "source-limit",
    ]
    detail: str = ""
    """For the source limits: which network, which limit."""


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


def _source_limit(
    subject: Subject, pname: str, covered: dict[int, int]
) -> SubjectConflict | dict[int, int]:
    """The subject's networks refused past SOURCE_LIMITS, or the addresses they add
    (per family) to the `covered` so far."""
    cidrs = [ipaddress.ip_network(c, strict=False) for c in subject.sourceCIDRs or []]
    for network in cidrs:
        wide = source_width_problem(str(network))
        if wide:
            return SubjectConflict(subject.name, pname, "", "source-too-wide", wide)
    added = dict.fromkeys(SOURCE_LIMITS, 0)
    for network in cidrs:
        added[network.version] += network.num_addresses
    for family, limit in SOURCE_LIMITS.items():
        if covered[family] + added[family] > limit.max_addresses:
            detail = (
                "the source-bound subjects of one core may cover at most "
                f"{_count(family, limit.max_addresses)} together"
            )
            return SubjectConflict(subject.name, pname, "", "source-limit", detail)
    return added


def _count(family: int, addresses: int) -> str:
    if family == 6:
        return f"{addresses >> (128 - SOURCE_LIMITS[6].min_prefix)} IPv6 /64 networks"
    return f"{addresses} IPv4 addresses"


def merge_subjects(bindings: list[PolicyBinding]) -> MergedSubjects:
    names: dict[str, str] = {}
    covered = dict.fromkeys(SOURCE_LIMITS, 0)
    hashes: dict[str, str] = {}
    accounts: dict[str, str] = {}
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
                added = _source_limit(subject, pname, covered)
                if isinstance(added, SubjectConflict):
                    conflicts.append(added)
                    continue
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
                for family, count in added.items():
                    covered[family] += count
                continue
            if subject.serviceAccount is not None:
                user = subject.serviceAccount.username(policy.metadata.namespace)
                if user in accounts:
                    conflicts.append(
                        SubjectConflict(
                            subject.name, pname, accounts[user], "duplicate-service-account"
                        )
                    )
                    continue
                names[subject.name] = pname
                accounts[user] = pname
                subjects.append(
                    SubjectConfig(
                        name=subject.name,
                        serviceAccount=user,
                        rate=policy.spec.rateLimit,
                        rules=list(policy.spec.rules),
                    )
                )
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
            grace = binding.previous.get(subject.name)
            subjects.append(
                SubjectConfig(
                    name=subject.name,
                    tokenHmacSha256=token,
                    previousTokenHmacSha256=grace.token_hash if grace else None,
                    previousTokenUntil=grace.until if grace else None,
                    rate=policy.spec.rateLimit,
                    rules=list(policy.spec.rules),
                )
            )
    subjects.sort(key=lambda s: s.name)
    return MergedSubjects(subjects, sorted(conflicts), sorted(unresolved))
