"""Token authentication and the per-source failure throttle."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from qsys_gateway.auth import MAX_TOKEN_BYTES, Authenticator, FailureThrottle, hash_token
from qsys_protocol.config import SubjectConfig, token_hmac

TOKENS = {"room-101-panel": "panel-token-1", "ai-agent": "agent-token-2", "ops": "ops-token-3"}


def subjects() -> list[SubjectConfig]:
    return [SubjectConfig(name=n, tokenSha256=hash_token(t)) for n, t in TOKENS.items()]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hash_token_is_sha256_hex() -> None:
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()
    assert hash_token("é") == hashlib.sha256("é".encode()).hexdigest()


def test_authenticate_finds_each_subject() -> None:
    auth = Authenticator(subjects())
    for name, token in TOKENS.items():
        found = auth.authenticate(token)
        assert found is not None
        assert found.name == name


def test_authenticate_rejects_wrong_and_near_tokens() -> None:
    auth = Authenticator(subjects())
    for bad in ["", "panel-token", "panel-token-1 ", "PANEL-TOKEN-1", hash_token("panel-token-1")]:
        assert auth.authenticate(bad) is None


def test_no_subjects_means_nobody_authenticates() -> None:
    assert Authenticator([]).authenticate("panel-token-1") is None
    assert Authenticator([]).logon("room-101-panel", "panel-token-1") is None


def test_oversized_token_is_rejected_even_if_its_hash_is_configured() -> None:
    huge = "x" * (MAX_TOKEN_BYTES + 1)
    auth = Authenticator([SubjectConfig(name="big", tokenSha256=hash_token(huge))])
    assert auth.authenticate(huge) is None
    at_limit = "y" * MAX_TOKEN_BYTES
    auth = Authenticator([SubjectConfig(name="edge", tokenSha256=hash_token(at_limit))])
    found = auth.authenticate(at_limit)
    assert found is not None
    assert found.name == "edge"


def test_multibyte_token_over_the_byte_limit_is_rejected() -> None:
    token = "é" * (MAX_TOKEN_BYTES // 2 + 1)  # fewer chars than the limit, more bytes
    auth = Authenticator([SubjectConfig(name="e", tokenSha256=hash_token(token))])
    assert auth.authenticate(token) is None


def test_unencodable_and_non_string_tokens_fail_without_raising() -> None:
    auth = Authenticator(subjects())
    assert auth.authenticate("\ud800") is None
    assert auth.authenticate(None) is None  # type: ignore[arg-type]
    assert auth.authenticate(b"panel-token-1") is None  # type: ignore[arg-type]
    assert auth.logon("\ud800", "panel-token-1") is None
    assert auth.logon(None, "panel-token-1") is None  # type: ignore[arg-type]


def test_logon_needs_name_and_token_of_the_same_subject() -> None:
    auth = Authenticator(subjects())
    found = auth.logon("room-101-panel", "panel-token-1")
    assert found is not None
    assert found.name == "room-101-panel"
    assert auth.logon("ai-agent", "panel-token-1") is None  # another subject's token
    assert auth.logon("room-101-panel", "wrong") is None
    assert auth.logon("nobody", "panel-token-1") is None
    assert auth.logon("", "panel-token-1") is None
    assert auth.logon("room-101-panel", "") is None
    assert auth.logon("x" * 300, "panel-token-1") is None


@given(st.text(max_size=64))
def test_random_tokens_never_authenticate(token: str) -> None:
    auth = Authenticator(subjects())
    expected = next((n for n, t in TOKENS.items() if t == token), None)
    found = auth.authenticate(token)
    assert (found.name if found else None) == expected


@given(st.text(min_size=1, max_size=64), st.text(min_size=1, max_size=64))
def test_logon_accepts_only_configured_pairs(user: str, token: str) -> None:
    auth = Authenticator(subjects())
    found = auth.logon(user, token)
    assert (found is not None) == (TOKENS.get(user) == token)


def test_throttle_blocks_after_max_failures_then_expires() -> None:
    clock = FakeClock()
    throttle = FailureThrottle(max_failures=3, window=60, block=30, clock=clock)
    assert throttle.retry_after("10.0.0.1") == 0
    throttle.failure("10.0.0.1")
    throttle.failure("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 0
    throttle.failure("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 30
    assert throttle.retry_after("10.0.0.2") == 0  # per source
    clock.now += 10
    assert throttle.retry_after("10.0.0.1") == 20
    clock.now += 20
    assert throttle.retry_after("10.0.0.1") == 0


def test_throttle_forgets_failures_outside_the_window() -> None:
    clock = FakeClock()
    throttle = FailureThrottle(max_failures=3, window=10, block=30, clock=clock)
    throttle.failure("a")
    throttle.failure("a")
    clock.now += 11
    throttle.failure("a")
    throttle.failure("a")
    assert throttle.retry_after("a") == 0
    throttle.failure("a")
    assert throttle.retry_after("a") == 30


def test_success_resets_failures_but_not_an_active_block() -> None:
    clock = FakeClock()
    throttle = FailureThrottle(max_failures=2, window=60, block=5, clock=clock)
    throttle.failure("a")
    throttle.success("a")
    throttle.failure("a")
    assert throttle.retry_after("a") == 0
    throttle.failure("a")
    assert throttle.retry_after("a") == 5
    throttle.success("a")
    assert throttle.retry_after("a") == 5
    clock.now += 5
    throttle.success("a")
    assert len(throttle) == 0


def test_throttle_memory_is_bounded_and_evicts_oldest() -> None:
    clock = FakeClock()
    throttle = FailureThrottle(max_failures=1, window=60, block=60, max_sources=100, clock=clock)
    addresses = [f"10.0.{i // 256}.{i % 256}" for i in range(1000)]
    for address in addresses:
        throttle.failure(address)
        assert len(throttle) <= 100
    assert all(throttle.retry_after(a) == 0 for a in addresses[:900])  # evicted, oldest first
    assert all(throttle.retry_after(a) == 60 for a in addresses[900:])  # newest kept


def test_throttle_stores_no_tokens() -> None:
    throttle = FailureThrottle()
    throttle.failure("192.0.2.1")
    assert "panel-token-1" not in repr(vars(throttle))


KEY = b"k" * 16 + b"0123456789abcdef"


def keyed_subjects() -> list[SubjectConfig]:
    return [SubjectConfig(name=n, tokenHmacSha256=token_hmac(KEY, t)) for n, t in TOKENS.items()]


def test_keyed_hashes_authenticate_only_under_their_key() -> None:
    auth = Authenticator(keyed_subjects(), KEY)
    for name, token in TOKENS.items():
        found = auth.authenticate(token)
        assert found is not None
        assert found.name == name
        logged = auth.logon(name, token)
        assert logged is not None
        assert logged.name == name
    assert auth.authenticate(token_hmac(KEY, "panel-token-1")) is None
    other = Authenticator(keyed_subjects(), b"x" * 32)
    assert all(other.authenticate(t) is None for t in TOKENS.values())


def test_keyed_hash_is_not_the_plain_sha256() -> None:
    assert token_hmac(KEY, "abc") != hash_token("abc")
    assert token_hmac(KEY, "abc") == hmac.new(KEY, b"abc", hashlib.sha256).hexdigest()


def test_keyed_and_legacy_subjects_side_by_side() -> None:
    """The deprecation period: an old config's subjects keep working next to new ones."""
    mixed = [
        SubjectConfig(name="new", tokenHmacSha256=token_hmac(KEY, "new-token")),
        SubjectConfig(name="old", tokenSha256=hash_token("old-token")),
    ]
    auth = Authenticator(mixed, KEY)
    assert [auth.authenticate(t).name for t in ("new-token", "old-token")] == ["new", "old"]  # type: ignore[union-attr]
    assert auth.authenticate(hash_token("new-token")) is None


def test_keyed_subjects_without_a_key_are_refused() -> None:
    with pytest.raises(ValueError, match="token key"):
        Authenticator(keyed_subjects(), None)


def test_subject_needs_exactly_one_hash() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        SubjectConfig(name="a")
    with pytest.raises(ValidationError, match="exactly one"):
        SubjectConfig(name="a", tokenSha256="0" * 64, tokenHmacSha256="1" * 64)
