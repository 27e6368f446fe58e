"""The TokenReview cache, single flight and bounds (pure logic: the API call is a stub
here; tests/e2e/test_serviceaccount_gateway.py runs it against a real API server)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import pytest
from pydantic import ValidationError

from qsys_gateway.metrics import GatewayMetrics
from qsys_gateway.tokenreview import (
    ERROR_CACHE_SECONDS,
    ReviewBusy,
    ReviewUnavailable,
    TokenReviewer,
    claims,
)
from qsys_protocol.config import GatewayConfig, TokenReviewConfig

AUD = "core-gateway.rooms.svc"
PANEL = "system:serviceaccount:rooms:panel"


def jwt(sub: str = PANEL, aud: str | list[str] = AUD, exp: float | None = None, n: int = 0) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    payload: dict[str, object] = {"sub": sub, "aud": aud, "n": n}
    payload["exp"] = int(time.time() + 3600) if exp is None else exp
    return f"{part({'alg': 'RS256'})}.{part(payload)}.c2lnbmF0dXJl"


class Api:
    """Stands in for the API server: answers from `users` (token → username)."""

    def __init__(self, users: dict[str, str], audiences: list[str] | None = None) -> None:
        self.users = users
        self.audiences = [AUD] if audiences is None else audiences
        self.calls = 0
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, token: str, audience: str, timeout: float) -> tuple[bool, str, list[str]]:
        self.calls += 1
        assert self.gate.wait(10)
        if self.fail:
            raise ReviewUnavailable("API server answered 503 Service Unavailable")
        user = self.users.get(token)
        return (user is not None, user or "", self.audiences if user else [])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reviewer(api: Api, clock: Clock | None = None, **settings: object) -> TokenReviewer:
    config = TokenReviewConfig.model_validate({"audience": AUD, **settings})
    return TokenReviewer(config, GatewayMetrics(), call=api, clock=clock or time.monotonic)


def count(r: TokenReviewer, name: str, label: str) -> float:
    metric = getattr(r._metrics, name)
    return float(metric.labels(label)._value.get())


async def test_a_reviewed_token_is_reused_within_the_ttl_then_reviewed_again() -> None:
    token, clock = jwt(), Clock()
    api = Api({token: PANEL})
    r = reviewer(api, clock, cacheSeconds=30)
    answers = [await r.review(token, "10.0.0.1") for _ in range(5)]
    assert {a.username for a in answers} == {PANEL}
    assert api.calls == 1
    assert count(r, "tokenreview_cache", "hit") == 4
    clock.now += 31
    await r.review(token, "10.0.0.1")
    assert api.calls == 2


async def test_the_cache_never_outlives_the_tokens_exp() -> None:
    token, clock = jwt(exp=time.time() + 3), Clock()
    r = reviewer(Api({token: PANEL}), clock, cacheSeconds=300)
    answer = await r.review(token, "s")
    assert answer.username == PANEL
    assert answer.expires == pytest.approx(time.time() + 3, abs=1.5)
    clock.now += 4
    assert r.cached(token) is None


async def test_a_refusal_is_cached_shorter_so_a_flood_of_one_bad_token_costs_one_review() -> None:
    bad, clock = jwt(sub="system:serviceaccount:x:y"), Clock()
    api = Api({})
    r = reviewer(api, clock, negativeCacheSeconds=5)
    for _ in range(50):
        assert (await r.review(bad, "s")).username is None
    assert api.calls == 1
    clock.now += 6
    await r.review(bad, "s")
    assert api.calls == 2


async def test_concurrent_identical_reviews_share_one_call() -> None:
    token = jwt()
    api = Api({token: PANEL})
    api.gate.clear()
    r = reviewer(api, maxInFlightPerSource=1)
    tasks = [asyncio.create_task(r.review(token, f"10.0.0.{i}")) for i in range(20)]
    await asyncio.sleep(0.05)
    assert r.in_flight == 1
    api.gate.set()
    answers = await asyncio.gather(*tasks)
    assert {a.username for a in answers} == {PANEL}
    assert api.calls == 1
    assert count(r, "tokenreview_cache", "coalesced") == 19


async def test_reviews_in_flight_are_bounded_per_source_and_overall() -> None:
    api = Api({})
    api.gate.clear()
    r = reviewer(api, maxInFlight=3, maxInFlightPerSource=2)
    first = [asyncio.create_task(r.review(jwt(n=i), "a")) for i in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(ReviewBusy):
        await r.review(jwt(n=10), "a")
    third = asyncio.create_task(r.review(jwt(n=11), "b"))
    await asyncio.sleep(0.05)
    with pytest.raises(ReviewBusy):
        await r.review(jwt(n=12), "c")
    api.gate.set()
    await asyncio.gather(*first, third)
    assert api.calls == 3
    assert count(r, "tokenreview_skipped", "busy") == 2
    assert r.in_flight == 0
    assert r._per_source == {}


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("not-a-jwt", "not a ServiceAccount token"),
        ("a.b.c", "not a ServiceAccount token"),
        ("x" * 5000, "not a ServiceAccount token"),
        (jwt(aud="someone-else"), "another audience"),
        (jwt(aud=[]), "another audience"),
        (jwt(exp=time.time() - 1), "expired"),
    ],
    # Fixed ids: the tokens carry the time, and xdist's workers must collect equal ids.
    ids=["not-a-jwt", "three-parts", "oversized", "other-audience", "no-audience", "expired"],
)
async def test_tokens_that_cannot_be_for_this_gateway_are_never_reviewed(
    token: str, why: str
) -> None:
    api = Api({token: PANEL})
    r = reviewer(api)
    answer = await r.review(token, "s")
    assert answer.username is None
    assert why in answer.reason
    assert api.calls == 0


async def test_the_api_servers_audiences_and_authentication_decide() -> None:
    token = jwt()
    r = reviewer(Api({token: PANEL}, audiences=["https://kubernetes.default.svc"]))
    assert "another audience" in (await r.review(token, "s")).reason
    r = reviewer(Api({}))
    assert "not authenticated" in (await r.review(token, "s")).reason


async def test_no_answer_fails_closed_and_is_cached_briefly() -> None:
    token, clock = jwt(), Clock()
    api = Api({token: PANEL})
    api.fail = True
    r = reviewer(api, clock)
    with pytest.raises(ReviewUnavailable, match="503"):
        await r.review(token, "s")
    with pytest.raises(ReviewUnavailable):
        r.cached(token)
    assert api.calls == 1
    assert count(r, "tokenreview", "error") == 1
    api.fail = False
    clock.now += ERROR_CACHE_SECONDS + 0.1
    assert (await r.review(token, "s")).username == PANEL


async def test_a_hung_api_server_times_out() -> None:
    token = jwt()
    api = Api({token: PANEL})
    api.gate.clear()
    r = reviewer(api, timeoutSeconds=0.1)
    with pytest.raises(ReviewUnavailable, match="timed out"):
        await r.review(token, "s")
    api.gate.set()
    r.close()


async def test_the_cache_is_bounded_lru_and_holds_no_token() -> None:
    tokens = [jwt(n=i) for i in range(10)]
    r = reviewer(Api(dict.fromkeys(tokens, PANEL)), maxCacheEntries=4)
    for t in tokens:
        await r.review(t, "s")
    assert len(r) == 4
    assert r.cached(tokens[0]) is None
    assert r.cached(tokens[-1]) is not None
    assert not any(t.encode() in key for t in tokens for key in r._cache)


async def test_a_reload_drops_reviews_no_subject_names_and_all_on_a_new_audience() -> None:
    panel, other = jwt(n=1), jwt(n=2)
    r = reviewer(Api({panel: PANEL, other: "system:serviceaccount:rooms:other"}))
    await r.review(panel, "s")
    await r.review(other, "s")
    r.configure(TokenReviewConfig(audience=AUD), {PANEL})
    assert r.cached(panel) is not None
    assert r.cached(other) is None
    r.configure(TokenReviewConfig(audience="new"), {PANEL})
    assert len(r) == 0


def test_claims_reads_only_jwt_payload_objects() -> None:
    assert claims(jwt())["sub"] == PANEL  # type: ignore[index]
    assert claims("e30.W10.e30") is None  # payload is a JSON array
    assert claims("e30.!!!.e30") is None


CORE = {"host": "127.0.0.1"}


def test_config_needs_token_review_iff_a_service_account_subject_exists() -> None:
    sa = {"name": "panel", "serviceAccount": PANEL}
    with pytest.raises(ValidationError, match="has serviceAccount but tokenReview is not set"):
        GatewayConfig.model_validate({"core": CORE, "subjects": [sa]})
    with pytest.raises(ValidationError, match="tokenReview: set only when"):
        GatewayConfig.model_validate({"core": CORE, "tokenReview": {"audience": AUD}})
    cfg = GatewayConfig.model_validate(
        {"core": CORE, "tokenReview": {"audience": AUD}, "subjects": [sa]}
    )
    assert cfg.by_service_account(PANEL) is cfg.subjects[0]
    assert cfg.tokenReview is not None
    assert cfg.tokenReview.cacheSeconds == 30


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"subjects": [{"name": "a", "serviceAccount": "panel"}]}, "subjects.0.serviceAccount"),
        (
            {
                "subjects": [
                    {"name": "a", "serviceAccount": PANEL},
                    {"name": "b", "serviceAccount": PANEL},
                ]
            },
            "names serviceAccount",
        ),
        (
            {"subjects": [{"name": "a", "serviceAccount": PANEL, "sourceCIDRs": ["10.0.0.0/8"]}]},
            "exactly one of",
        ),
        (
            {
                "subjects": [
                    {
                        "name": "a",
                        "serviceAccount": PANEL,
                        "previousTokenHmacSha256": "0" * 64,
                        "previousTokenUntil": "2026-12-01T00:00:00Z",
                    }
                ]
            },
            "previousTokenHmacSha256 needs tokenHmacSha256",
        ),
        ({"tokenReview": {"audience": ""}}, "tokenReview.audience"),
        ({"tokenReview": {"audience": AUD, "cacheSeconds": 301}}, "tokenReview.cacheSeconds"),
    ],
)
def test_bad_service_account_config_names_the_field(data: dict[str, object], message: str) -> None:
    from qsys_protocol.config import ConfigError, parse_config

    data = {"core": CORE, "tokenReview": {"audience": AUD}, **data}
    with pytest.raises(ConfigError, match=message):
        parse_config(data)
