"""ServiceAccount subjects: projected tokens checked with the Kubernetes TokenReview API.

A token no token subject matches is reviewed only when it looks like a token for this
gateway (a JWT whose unverified claims carry the configured audience and an `exp` not
past; one without `exp` is refused unreviewed): the claims are never trusted to admit,
only to refuse early. A review admits when the API server says `authenticated`, lists
the audience, and names a user; which subject that user is, is admission's question
(the current config's `serviceAccount`).

Answers are cached under SHA-256 of the token (never the token): positive ones for
`cacheSeconds` and never past the token's `exp`, refusals for `negativeCacheSeconds`,
API failures for `ERROR_CACHE_SECONDS`; identical concurrent reviews share one call.
Calls in flight are bounded overall and per source address; over the bound the client
is refused at once. Every failure to get an answer refuses (fail closed).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hashlib
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import orjson

from qsys_protocol.config import TokenReviewConfig

from .auth import MAX_TOKEN_BYTES
from .metrics import GatewayMetrics

log = logging.getLogger("qsys_gateway.tokenreview")

ERROR_CACHE_SECONDS = 1.0
"""An API failure is answered from the cache this long: a flood of one token while the
API server is down costs one call per second, not one per attempt."""
MAX_THREADS = 64
_JWT = re.compile(r"^[A-Za-z0-9_-]{2,}\.([A-Za-z0-9_-]{2,})\.[A-Za-z0-9_-]{2,}$")


@dataclass(frozen=True, slots=True)
class Answer:
    """What the API server said about one token (`username` None: not admitted)."""

    username: str | None
    reason: str
    expires: float = math.inf
    """The token's `exp` (Unix seconds) for an admitted token."""


class ReviewUnavailable(Exception):
    """No answer from the API server (unreachable, timeout, 5xx, 403): refuse."""


class ReviewBusy(Exception):
    """Too many reviews in flight (overall or for this source): refuse, retry later."""


ReviewCall = Callable[[str, str, float], tuple[bool, str, list[str]]]
"""(token, audience, timeout) → (authenticated, username, audiences); raises
`ReviewUnavailable` when the API server gives no answer."""


def claims(token: str) -> dict[str, Any] | None:
    """The unverified payload of a JWT-shaped token, or None for anything else."""
    if len(token) > MAX_TOKEN_BYTES:
        return None
    shape = _JWT.match(token)
    if shape is None:
        return None
    part = shape.group(1)
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def _prefilter(token: str, audience: str, now: float) -> str | None:
    """Why this token cannot be a projected token for `audience` (None: review it)."""
    payload = claims(token)
    if payload is None:
        return "not a ServiceAccount token"
    aud = payload.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if audience not in audiences:
        return "ServiceAccount token for another audience"
    exp = payload.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        # projected tokens always carry one; a token without it would be admitted for
        # as long as its connection lasts
        return "ServiceAccount token without exp"
    if exp <= now:
        return "ServiceAccount token expired"
    return None


def _expiry(token: str) -> float:
    payload = claims(token) or {}
    exp = payload.get("exp")
    return float(exp) if isinstance(exp, int | float) else math.inf


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class KubernetesReview:
    """The blocking TokenReview call with the `kubernetes` client: in a pod its own
    ServiceAccount (in-cluster config), elsewhere KUBECONFIG. Built on first use."""

    def __init__(self) -> None:
        self._api: Any = None
        self._lock = threading.Lock()

    def _client(self) -> Any:
        with self._lock:
            if self._api is None:
                from kubernetes import client, config

                try:
                    cfg = client.Configuration()
                    try:
                        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
                    except config.ConfigException:
                        config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
                except Exception as exc:  # no usable credentials: refuse, say why
                    raise ReviewUnavailable(
                        f"no Kubernetes API credentials ({type(exc).__name__})"
                    ) from None
                cfg.retries = 0  # one attempt within timeoutSeconds; the client retries
                self._api = client.AuthenticationV1Api(client.ApiClient(cfg))
            return self._api

    def __call__(self, token: str, audience: str, timeout: float) -> tuple[bool, str, list[str]]:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        api = self._client()
        body = client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token, audiences=[audience])
        )
        try:
            review = api.create_token_review(body, _request_timeout=timeout)
        except ApiException as exc:
            raise ReviewUnavailable(f"API server answered {exc.status} {exc.reason}") from None
        except Exception as exc:  # urllib3: refused, reset, timed out, TLS
            raise ReviewUnavailable(f"API server unreachable ({type(exc).__name__})") from None
        status = review.status
        if status is None:
            return False, "", []
        user = status.user
        return (
            bool(status.authenticated),
            (user.username or "") if user is not None else "",
            list(status.audiences or []),
        )

    def close(self) -> None:
        with self._lock:
            if self._api is not None:
                self._api.api_client.close()
                self._api = None


@dataclass(slots=True)
class _Entry:
    answer: Answer | None
    """None: the API server gave no answer (cached `ERROR_CACHE_SECONDS`)."""
    until: float


class TokenReviewer:
    """Reviews tokens for one gateway; survives reloads (`configure`)."""

    def __init__(
        self,
        config: TokenReviewConfig,
        metrics: GatewayMetrics,
        *,
        call: ReviewCall | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._metrics = metrics
        self._call: ReviewCall = call if call is not None else KubernetesReview()
        self._clock = clock
        self._wall = wall
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._flights: dict[bytes, asyncio.Task[Answer]] = {}
        self._per_source: dict[str, int] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(
            MAX_THREADS, thread_name_prefix="tokenreview"
        )

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    def configure(self, config: TokenReviewConfig, accounts: Collection[str]) -> None:
        """A reload: new settings; reviews of users no subject names any more are dropped
        (all of them when the audience changed)."""
        if config.audience != self.config.audience:
            self._cache.clear()
        else:
            for key, entry in list(self._cache.items()):
                answer = entry.answer
                if answer is not None and answer.username and answer.username not in accounts:
                    del self._cache[key]
        self.config = config
        self._trim()

    def cached(self, token: str) -> Answer | None:
        """The cached answer for `token` (no API call); None when there is none."""
        entry = self._lookup(_key(token))
        if entry is None:
            return None
        if entry.answer is None:
            raise ReviewUnavailable("API server unavailable (cached)")
        return entry.answer

    def _lookup(self, key: bytes) -> _Entry | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry.until <= self._clock():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        self._metrics.tokenreview_cache.labels("hit").inc()
        return entry

    async def review(self, token: str, source: str) -> Answer:
        """The answer for `token`: cached, shared with an identical review in flight, or
        a new TokenReview. Raises `ReviewUnavailable` / `ReviewBusy` (refuse either way)."""
        key = _key(token)
        entry = self._lookup(key)
        if entry is not None:
            if entry.answer is None:
                raise ReviewUnavailable("API server unavailable (cached)")
            return entry.answer
        flight = self._flights.get(key)
        if flight is not None:
            self._metrics.tokenreview_cache.labels("coalesced").inc()
            return await asyncio.shield(flight)
        cfg = self.config
        refused = _prefilter(token, cfg.audience, self._wall())
        if refused is not None:
            self._metrics.tokenreview_skipped.labels("claims").inc()
            return Answer(None, refused)
        if (
            len(self._flights) >= cfg.maxInFlight
            or self._per_source.get(source, 0) >= cfg.maxInFlightPerSource
        ):
            self._metrics.tokenreview_skipped.labels("busy").inc()
            raise ReviewBusy("too many token reviews in flight")
        self._per_source[source] = self._per_source.get(source, 0) + 1
        flight = asyncio.get_running_loop().create_task(self._review(token, key))
        self._flights[key] = flight

        def done(_: asyncio.Task[Answer]) -> None:
            self._flights.pop(key, None)
            left = self._per_source.get(source, 0) - 1
            if left > 0:
                self._per_source[source] = left
            else:
                self._per_source.pop(source, None)

        flight.add_done_callback(done)
        return await asyncio.shield(flight)

    async def _review(self, token: str, key: bytes) -> Answer:
        cfg = self.config
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(cfg.timeoutSeconds + 0.5):
                authenticated, username, audiences = await loop.run_in_executor(
                    self._pool, self._call, token, cfg.audience, cfg.timeoutSeconds
                )
        except (ReviewUnavailable, TimeoutError) as exc:
            reason = str(exc) if isinstance(exc, ReviewUnavailable) else "timed out"
            self._metrics.tokenreview.labels("error").inc()
            self._metrics.tokenreview_duration.observe(time.perf_counter() - started)
            log.error(
                "TokenReview failed, refusing the client (fail closed): %s",
                reason,
                extra={"reason": reason},
            )
            self._store(key, _Entry(None, self._clock() + ERROR_CACHE_SECONDS))
            raise ReviewUnavailable(reason) from None
        self._metrics.tokenreview_duration.observe(time.perf_counter() - started)
        answer = self._judge(token, authenticated, username, audiences)
        self._metrics.tokenreview.labels("authenticated" if answer.username else "rejected").inc()
        ttl = float(cfg.negativeCacheSeconds)
        if answer.username is not None:
            ttl = min(float(cfg.cacheSeconds), answer.expires - self._wall())
        if ttl > 0:
            self._store(key, _Entry(answer, self._clock() + ttl))
        return answer

    def _judge(
        self, token: str, authenticated: bool, username: str, audiences: list[str]
    ) -> Answer:
        if not authenticated:
            return Answer(None, "ServiceAccount token not authenticated by the API server")
        if self.config.audience not in audiences:
            return Answer(None, "ServiceAccount token for another audience")
        if not username:
            return Answer(None, "TokenReview named no user")
        expires = _expiry(token)  # only now: the API server vouched for the token
        if expires <= self._wall():
            return Answer(None, "ServiceAccount token expired")
        return Answer(username, "ServiceAccount token reviewed", expires)

    def _store(self, key: bytes, entry: _Entry) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        self._trim()

    def _trim(self) -> None:
        while len(self._cache) > self.config.maxCacheEntries:
            self._cache.popitem(last=False)

    def close(self) -> None:
        for flight in list(self._flights.values()):
            flight.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(self._call, "close", None)
        if close is not None:
            close()
