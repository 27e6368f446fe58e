"""Client authentication: bearer tokens checked against the token hashes of the config.

A subject's hash is HMAC-SHA256 under the core's token key (kept in its own
Secret, so the config alone does not allow offline guessing), or, deprecated,
a plain SHA-256. Tokens are never stored, logged or returned; only their
hashes are held in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qsys_protocol.config import SubjectConfig

MAX_TOKEN_BYTES = 4096
MAX_USER_CHARS = 256


def hash_token(token: str) -> str:
    """SHA-256 hex digest of a token, as stored in the deprecated `subjects[].tokenSha256`."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _encode(token: str) -> bytes | None:
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
        return None
    try:
        raw = token.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return None
    return raw if len(raw) <= MAX_TOKEN_BYTES else None


@dataclass(frozen=True, slots=True)
class Match:
    subject: SubjectConfig
    token_hash: str
    """The configured hash the token matched: the subject's current one or, within a
    rotation grace period, its previous one (see `SubjectConfig.credential`)."""


class Authenticator:
    """Maps presented tokens to subjects; rebuilt on every config reload."""

    def __init__(
        self,
        subjects: Sequence[SubjectConfig],
        key: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if key is None and any(s.tokenHmacSha256 for s in subjects):
            raise ValueError("subjects with tokenHmacSha256 need the token key")
        self._key = key
        self._clock = clock
        self._plain = any(s.tokenSha256 for s in subjects)
        # (keyed?, expected digest, name, subject, hex of the digest)
        entries = [
            (
                s.tokenHmacSha256 is not None,
                bytes.fromhex(s.token_hash),
                s.name.encode(),
                s,
                s.token_hash,
            )
            for s in subjects
            if s.token_hash
        ]
        entries += [
            (
                True,
                bytes.fromhex(s.previousTokenHmacSha256),
                s.name.encode(),
                s,
                s.previousTokenHmacSha256,
            )
            for s in subjects
            if s.previousTokenHmacSha256 is not None
        ]
        self._entries: tuple[tuple[bool, bytes, bytes, SubjectConfig, str], ...] = tuple(entries)
        self._sources: tuple[
            tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, SubjectConfig], ...
        ]
        self._sources = tuple(
            (ipaddress.ip_network(cidr), s) for s in subjects for cidr in s.sourceCIDRs
        )

    def by_source(self, address: str) -> SubjectConfig | None:
        """The source-bound subject whose sourceCIDRs hold `address` (raw QRC only).

        The config guarantees that no two subjects' networks overlap.
        """
        if not self._sources:
            return None
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for network, subject in self._sources:
            if ip in network:
                return subject
        return None

    def _digests(self, token: str) -> tuple[bytes, bytes] | None:
        """(keyed, plain) digests of a presented token; each is b"" when no subject uses it."""
        raw = _encode(token)
        if raw is None:
            return None
        keyed = hmac.digest(self._key, raw, "sha256") if self._key is not None else b""
        plain = hashlib.sha256(raw).digest() if self._plain else b""
        return keyed, plain

    def _valid(self, found: Match | None) -> Match | None:
        if found is None or found.subject.credential(found.token_hash, self._clock()) is None:
            return None  # a previous token after its grace period
        return found

    def match(self, token: str, user: str | None = None, *, logon: bool = False) -> Match | None:
        """The subject a bearer token (with `logon`: a Logon `user` and token) belongs to."""
        digests = self._digests(token)
        if digests is None:
            return None
        user_raw = b""
        if logon:
            if not isinstance(user, str) or len(user) > MAX_USER_CHARS:
                return None
            try:
                user_raw = user.encode("utf-8")
            except UnicodeEncodeError:
                return None
        found: Match | None = None
        # Compare with every entry, no early exit: the time taken does not
        # depend on which subject (if any) matched.
        for keyed, expected, name, subject, hex_digest in self._entries:
            token_ok = hmac.compare_digest(digests[0] if keyed else digests[1], expected)
            name_ok = not logon or hmac.compare_digest(user_raw, name)
            if token_ok & name_ok:
                found = Match(subject, hex_digest)
        return self._valid(found)

    def authenticate(self, token: str) -> SubjectConfig | None:
        found = self.match(token)
        return found.subject if found else None

    def logon(self, user: str, token: str) -> SubjectConfig | None:
        """QRC / WebSocket `Logon`: the subject name and its token must both match."""
        found = self.match(token, user, logon=True)
        return found.subject if found else None


@dataclass(slots=True)
class _Source:
    window_start: float
    failures: int
    blocked_until: float


class FailureThrottle:
    """Blocks a key (source, or source + presented subject) for `block` seconds after
    `max_failures` failures in `window`; callers admit valid tokens regardless.

    Holds at most `max_sources` keys (the
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
