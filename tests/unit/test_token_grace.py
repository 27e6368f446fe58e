"""Token rotation grace periods: the operator's pure grace computation, the config model,
and the gateway's Authenticator admitting the previous token only until the grace ends."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from qsys_gateway.auth import Authenticator
from qsys_operator.api import AccessPolicy
from qsys_operator.render import PolicyBinding, grace_periods, merge_subjects
from qsys_protocol.config import SubjectConfig, token_hmac

KEY = b"k" * 32
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
OLD, NEW = token_hmac(KEY, "old-token"), token_hmac(KEY, "new-token")


def _policy(seconds: int | None = None) -> AccessPolicy:
    spec: dict[str, Any] = {"coreRef": {"name": "room"}, "subjects": [{"name": "panel"}]}
    if seconds is not None:
        spec["tokenGracePeriodSeconds"] = seconds
    return AccessPolicy.model_validate({"metadata": {"name": "p"}, "spec": spec})


def _rendered(current: str, previous: str | None = None, until: dt.datetime | None = None) -> Any:
    return [
        SubjectConfig(
            name="panel",
            tokenHmacSha256=current,
            previousTokenHmacSha256=previous,
            previousTokenUntil=until,
        )
    ]


def test_a_rotation_starts_a_grace_period_of_the_policy() -> None:
    assert _policy().spec.tokenGracePeriodSeconds == 300
    grace = grace_periods(_policy(), {"panel": NEW}, _rendered(OLD), NOW)
    assert grace["panel"].token_hash == OLD
    assert grace["panel"].until == NOW + dt.timedelta(seconds=300)


def test_an_unchanged_token_keeps_its_grace_until_it_ends() -> None:
    until = NOW + dt.timedelta(seconds=30)
    kept = grace_periods(_policy(), {"panel": NEW}, _rendered(NEW, OLD, until), NOW)
    assert (kept["panel"].token_hash, kept["panel"].until) == (OLD, until)
    later = NOW + dt.timedelta(seconds=31)
    assert grace_periods(_policy(), {"panel": NEW}, _rendered(NEW, OLD, until), later) == {}


def test_no_grace_when_zero_new_subject_or_unchanged() -> None:
    assert grace_periods(_policy(0), {"panel": NEW}, _rendered(OLD), NOW) == {}
    assert grace_periods(_policy(), {"panel": NEW}, [], NOW) == {}
    assert grace_periods(_policy(), {"panel": NEW}, _rendered(NEW), NOW) == {}
    assert grace_periods(_policy(), {}, _rendered(OLD), NOW) == {}
    legacy = [SubjectConfig(name="panel", tokenSha256="0" * 64)]
    assert grace_periods(_policy(), {"panel": NEW}, legacy, NOW) == {}


def test_merge_renders_the_previous_hash_and_its_end() -> None:
    policy = _policy()
    grace = grace_periods(policy, {"panel": NEW}, _rendered(OLD), NOW)
    merged = merge_subjects([PolicyBinding(policy, {"panel": NEW}, grace)])
    (subject,) = merged.subjects
    assert subject.tokenHmacSha256 == NEW
    assert subject.previousTokenHmacSha256 == OLD
    assert subject.previousTokenUntil == NOW + dt.timedelta(seconds=300)


def test_config_needs_both_previous_fields_with_a_zone() -> None:
    with pytest.raises(ValidationError, match="go together"):
        SubjectConfig(name="a", tokenHmacSha256=NEW, previousTokenHmacSha256=OLD)
    with pytest.raises(ValidationError, match="time zone"):
        SubjectConfig(
            name="a",
            tokenHmacSha256=NEW,
            previousTokenHmacSha256=OLD,
            previousTokenUntil=dt.datetime(2026, 1, 1),
        )
    (subject,) = _rendered(NEW, OLD, NOW)
    assert subject.credential(NEW, NOW.timestamp() + 999) == "current"
    assert subject.credential(OLD, NOW.timestamp() - 1) == "previous"
    assert subject.credential(OLD, NOW.timestamp()) is None
    assert subject.credential("f" * 64, 0) is None


def test_authenticator_admits_the_previous_token_until_the_grace_ends() -> None:
    clock = [NOW.timestamp() - 10]
    auth = Authenticator(_rendered(NEW, OLD, NOW), KEY, clock=lambda: clock[0])
    match = auth.match("old-token")
    assert match is not None
    assert (match.subject.name, match.token_hash) == ("panel", OLD)
    assert must_match(auth.match("new-token")).token_hash == NEW
    assert auth.logon("panel", "old-token") is not None
    assert auth.logon("other", "old-token") is None
    clock[0] = NOW.timestamp()
    assert auth.match("old-token") is None
    assert auth.logon("panel", "old-token") is None
    assert auth.authenticate("new-token") is not None


def must_match(value: Any) -> Any:
    assert value is not None
    return value
