"""Token verification CPU: keyed HMAC-SHA256 hashes against the deprecated plain SHA-256.

Runs `Authenticator.authenticate` in-process (no sockets) for a hit and a miss
with 1 and 128 subjects (the AccessPolicy maximum per policy), and reports CPU
time per call; the legacy rows are the baseline each keyed row compares to. The
last row is a ServiceAccount token (a ~1 KB JWT) answered from the TokenReview cache,
against a keyed hit with one subject.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from qsys_gateway.auth import Authenticator, hash_token
from qsys_gateway.metrics import GatewayMetrics
from qsys_gateway.tokenreview import TokenReviewer
from qsys_protocol.config import SubjectConfig, TokenReviewConfig, token_hmac

from .common import BenchContext, Result

SUBJECT_COUNTS = (1, 128)
BATCH = 200


def _subjects(tokens: list[str], key: bytes | None) -> list[SubjectConfig]:
    return [
        SubjectConfig(name=f"s{i}", tokenHmacSha256=token_hmac(key, t))
        if key is not None
        else SubjectConfig(name=f"s{i}", tokenSha256=hash_token(t))
        for i, t in enumerate(tokens)
    ]


def _measure(ctx: BenchContext, auth: Callable[[str], Any], token: str, scenario: str) -> Result:
    deadline = time.monotonic() + ctx.warmup
    while time.monotonic() < deadline:
        auth(token)
    calls = 0
    latencies: list[float] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    end = wall0 + ctx.duration
    while time.perf_counter() < end and calls < ctx.max_requests:
        t0 = time.perf_counter()
        for _ in range(BATCH):
            auth(token)
        latencies.append((time.perf_counter() - t0) / BATCH)
        calls += BATCH
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return Result("gateway/auth", scenario, calls, 0, wall, latencies, cpu_per_request=cpu / calls)


async def run(ctx: BenchContext) -> list[Result]:
    key = secrets.token_urlsafe(32).encode()
    results: list[Result] = []
    for count in SUBJECT_COUNTS:
        tokens = [secrets.token_urlsafe(32) for _ in range(count)]
        legacy = Authenticator(_subjects(tokens, None))
        keyed = Authenticator(_subjects(tokens, key), key)
        for case, token in (("hit", tokens[-1]), ("miss", secrets.token_urlsafe(32))):
            base = _measure(
                ctx, legacy.authenticate, token, f"sha256 (legacy), {count} subjects, {case}"
            )
            row = _measure(ctx, keyed.authenticate, token, f"hmac-sha256, {count} subjects, {case}")
            row.baseline = base
            results += [base, row]
    results.append(await _service_account(ctx, results[1]))
    return results


def _projected_token() -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"aud": ["bench"], "exp": int(time.time()) + 3600, "pad": "x" * 500}
    return f"{part({'alg': 'RS256'})}.{part(claims)}.{part('s' * 256)}"


async def _service_account(ctx: BenchContext, keyed_hit: Result) -> Result:
    """A cached ServiceAccount review: what each HTTP request of such a subject costs."""
    user = "system:serviceaccount:bench:panel"
    reviewer = TokenReviewer(
        TokenReviewConfig(audience="bench", cacheSeconds=300),
        GatewayMetrics(),
        call=lambda token, audience, timeout: (True, user, [audience]),
    )
    token = _projected_token()
    await reviewer.review(token, "bench")
    row = await asyncio.to_thread(
        _measure, ctx, reviewer.cached, token, "serviceAccount JWT, review cache hit"
    )
    row.baseline = keyed_hit
    reviewer.close()
    return row
