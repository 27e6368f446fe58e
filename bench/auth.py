"""Token verification CPU: keyed HMAC-SHA256 hashes against the deprecated plain SHA-256.

Runs `Authenticator.authenticate` in-process (no sockets) for a hit and a miss
with 1 and 128 subjects (the AccessPolicy maximum per policy), and reports CPU
time per call; the legacy rows are the baseline each keyed row compares to.
"""

from __future__ import annotations

import secrets
import time

from qsys_gateway.auth import Authenticator, hash_token
from qsys_protocol.config import SubjectConfig, token_hmac

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


def _measure(ctx: BenchContext, auth: Authenticator, token: str, scenario: str) -> Result:
    deadline = time.monotonic() + ctx.warmup
    while time.monotonic() < deadline:
        auth.authenticate(token)
    calls = 0
    latencies: list[float] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    end = wall0 + ctx.duration
    while time.perf_counter() < end and calls < ctx.max_requests:
        t0 = time.perf_counter()
        for _ in range(BATCH):
            auth.authenticate(token)
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
            base = _measure(ctx, legacy, token, f"sha256 (legacy), {count} subjects, {case}")
            row = _measure(ctx, keyed, token, f"hmac-sha256, {count} subjects, {case}")
            row.baseline = base
            results += [base, row]
    return results
