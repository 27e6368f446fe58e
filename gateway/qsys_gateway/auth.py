"""Client authentication: bearer tokens checked against the SHA-256 hashes of the config.

Tokens are never stored, logged or returned; only their hashes are held in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qsys_protocol.config import SubjectConfig

MAX_TOKEN_BYTES = 4096
MAX_USER_CHARS = 256


def hash_token(token: str) -> str:
    """SHA-256 hex digest of a token, as stored in `subjects[].tokenSha256`."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _digest(token: str) -> bytes | None:
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
        return None
    try:
        raw = token.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return None
    if len(raw) > MAX_TOKEN_BYTES:
        return None
    return hashlib.sha256(raw).digest()


class Authenticator:
    """Maps presented tokens to subjects; rebuilt on every config reload."""

    def __init__(self, subjects: Sequence[SubjectConfig]) -> None:
        self._entries: tuple[tuple[bytes, bytes, SubjectConfig], ...] = tuple(
            (bytes.fromhex(s.tokenSha256), s.name.encode("utf-8"), s) for s in subjects
        )

    def authenticate(self, token: str) -> SubjectConfig | None:
        digest = _digest(token)
        if digest is None:
            return None
        found: SubjectConfig | None = None
        # Compare with every subject, no early exit: the time taken does not
        # depend on which subject (if any) matched.
        for expected, _name, subject in self._entries:
            if hmac.compare_digest(digest, expected):
                found = subject
        return found

    def logon(self, user: str, token: str) -> SubjectConfig | None:
        """QRC / WebSocket `Logon`: the subject name and its token must both match."""
        digest = _digest(token)
        if digest is None or not isinstance(user, str) or len(user) > MAX_USER_CHARS:
            return None
        try:
            user_raw = user.encode("utf-8")
        except UnicodeEncodeError:
            return None
        found: SubjectConfig | None = None
        for expected, name, subject in self._entries:
            token_ok = hmac.compare_digest(digest, expected)
            name_ok = hmac.compare_digest(user_raw, name)
            if token_ok & name_ok:
                found = subject
        return found


@dataclass(slots=True)
class _Source:
    window_start: float
    failures: int
    blocked_until: float


class FailureThrottle:
    """Blocks a source address for `block` seconds after `max_failures` failures in `window`.

    Keyed by source address only; holds at most `max_sources` addresses (the
    least recently failing are forgotten first), so a flood of spoofed or
    rotating addresses cannot grow memory without bound.
    """

    def __init__(
        self,
        max_failures: int = 10,
        window: float = 60.0,
        block: float = 60.0,
        max_sources: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_failures < 1 or window <= 0 or block <= 0 or max_sources < 1:
            raise ValueError("max_failures, window, block and max_sources must be positive")
        self.max_failures = max_failures
        self.window = window
        self.block = block
        self.max_sources = max_sources
        self._clock = clock
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def retry_after(self, source: str) -> float:
        """Seconds until `source` may try again; 0 when it is not blocked."""
        state = self._sources.get(source)
        if state is None:
            return 0.0
        remaining = state.blocked_until - self._clock()
        return remaining if remaining > 0 else 0.0

    def failure(self, source: str) -> None:
        now = self._clock()
        state = self._sources.pop(source, None)
        if state is None or now - state.window_start > self.window:
            blocked_until = state.blocked_until if state is not None else 0.0
            state = _Source(window_start=now, failures=0, blocked_until=blocked_until)
        state.failures += 1
        if state.failures >= self.max_failures:
            state.blocked_until = now + self.block
            state.failures = 0
            state.window_start = now
        self._sources[source] = state  # most recent last
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)

    def success(self, source: str) -> None:
        """A successful authentication forgets earlier failures (not an active block)."""
        state = self._sources.get(source)
        if state is not None and state.blocked_until <= self._clock():
            del self._sources[source]
