"""Admission's identity: who the caller is (a token, a Logon, a ServiceAccount token
reviewed with TokenReview, a source address) and whether its credential still admits
it (the once-a-second sweep that closes what outlived its token)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from qsys_protocol.config import SubjectConfig
from qsys_protocol.qrc.errors import ErrorCode

from .auth import MAX_USER_CHARS
from .records import Caller, Records, Refusal
from .runtime import Runtime
from .tokenreview import Answer, ReviewBusy, ReviewUnavailable

SWEEP_SECONDS = 1.0
"""How often connections are checked for a token past its rotation grace period."""


def throttle_key(source_ip: str, user: str | None) -> str:
    """Failed logons are counted per source and presented subject name (bearer: none)."""
    if not user:
        return source_ip
    return f"{source_ip}\x00{user[:MAX_USER_CHARS]}"


@dataclass(frozen=True, slots=True)
class Proof:
    """A bearer token's match, kept by a keep-alive HTTP connection (`authenticate_kept`)."""

    header: str
    """The Authorization header exactly as received."""
    authenticator: object
    """The authenticator that matched it: a config or token-key reload replaces it."""
    subject: SubjectConfig
    token_hash: str


class Identity(Records):
    """Who the caller is, and whether its credential still admits it."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self._watched: dict[int, tuple[Caller, Callable[[], Awaitable[None]]]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def _token(self, caller: Caller) -> str | None:
        return self.credential(caller) if caller.token_hash or caller.expires is not None else None

    async def authenticate(
        self,
        caller: Caller,
        token: str | None,
        *,
        user: str | None = None,
        request_id: str,
        method: str = "Logon",
    ) -> SubjectConfig:
        """A bearer token (or a Logon `user` + token) → the subject, set on `caller`.

        A token no token subject matches is reviewed with the Kubernetes TokenReview API
        when ServiceAccount subjects exist (`tokenreview`). Failures are throttled per
        source and presented subject (`throttle_key`); a valid token is always admitted
        (a ServiceAccount token while throttled only from the review cache), so one
        guessing client behind a NAT or an ingress never locks out the correct tokens of
        the room. A refusal is audited as a call of `method`, a fixed word of the
        transport's (never the client's text), merged per source and reason within the
        audit window, and raised as `Refusal`."""
        rt = self.rt
        found = None
        if token:
            found = rt.rules.authenticator.match(token, user, logon=user is not None)
        key = throttle_key(caller.source_ip, user)
        if found is not None:
            rt.throttle.success(key)
            caller.subject, caller.token_hash = found.subject, found.token_hash
            return found.subject
        wait = rt.throttle.retry_after(key)
        reason = "invalid or missing token"
        if token and rt.token_review is not None:
            # Reviews are also throttled per source alone, so varying the Logon `User`
            # does not buy more of them.
            source = caller.source_ip
            throttled = wait > 0 or (key != source and rt.throttle.retry_after(source) > 0)
            try:
                answer = await self._review(token, source, throttled=throttled)
            except ReviewBusy:
                err = Refusal(ErrorCode.RATE_LIMITED, "Too many token reviews; retry later", 1.0)
                self._auth_failed(caller, method, err, request_id, "token reviews busy")
                raise err from None
            except ReviewUnavailable:
                self._review_failed(key, source, wait)
                err = Refusal(
                    ErrorCode.UNAUTHENTICATED, "Unauthenticated: the token could not be reviewed"
                )
                self._auth_failed(caller, method, err, request_id, "token review unavailable")
                raise err from None
            if answer is None:  # throttled, not in the cache: refused as throttled
                wait = max(wait, rt.throttle.retry_after(source))
            else:
                subject = self._service_account(answer, user)
                if subject is not None:
                    rt.throttle.success(key)
                    caller.subject, caller.token_hash = subject, ""
                    caller.expires = answer.expires
                    return subject
                reason = answer.reason
                if answer.username is not None:
                    reason = f"ServiceAccount {answer.username[:128]} is no subject's"
                if key != source and wait <= 0:
                    rt.throttle.failure(source)
        if wait > 0:
            err = Refusal(
                ErrorCode.RATE_LIMITED, "Too many failed authentications; retry later", wait
            )
            self._auth_failed(caller, method, err, request_id, "auth throttled")
            raise err
        rt.throttle.failure(key)
        err = Refusal(ErrorCode.UNAUTHENTICATED, "Unauthenticated")
        self._auth_failed(caller, method, err, request_id, reason)
        raise err

    async def authenticate_kept(
        self,
        caller: Caller,
        header: str,
        token: str | None,
        proof: Proof | None,
        *,
        request_id: str,
    ) -> Proof | None:
        """`authenticate` for a request on a keep-alive connection that was admitted
        before: the same Authorization header under the same authenticator (no reload
        since) is not hashed again, but the credential is still judged now (a previous
        token past its grace period is refused exactly as by `authenticate`). Returns
        what the connection keeps for its next request: a token subject's match only
        (a ServiceAccount token is reviewed again as its cache says), never a failure."""
        rt = self.rt
        authenticator = rt.rules.authenticator
        if proof is not None and proof.header == header and proof.authenticator is authenticator:
            caller.subject, caller.token_hash = proof.subject, proof.token_hash
            if self.credential(caller) is not None:
                rt.throttle.success(caller.source_ip)
                return proof
            caller.subject, caller.token_hash = None, ""
        subject = await self.authenticate(caller, token, request_id=request_id)
        if caller.expires is not None or not caller.token_hash:
            return None
        return Proof(header, authenticator, subject, caller.token_hash)

    def _review_failed(self, key: str, source: str, wait: float) -> None:
        """No answer counts as a failed logon too: an outage must not let a client have
        unbounded reviews attempted."""
        if wait > 0:
            return
        self.rt.throttle.failure(key)
        if key != source:
            self.rt.throttle.failure(source)

    async def _review(self, token: str, source_ip: str, *, throttled: bool) -> Answer | None:
        """The TokenReview answer for `token` (None: not reviewed now, being throttled)."""
        reviewer = self.rt.token_review
        assert reviewer is not None
        if not throttled:
            return await reviewer.review(token, source_ip)
        answer = reviewer.cached(token)
        if answer is None:
            self.rt.metrics.tokenreview_skipped.labels("throttled").inc()
        return answer

    def _service_account(self, answer: Answer, user: str | None) -> SubjectConfig | None:
        """The subject whose serviceAccount the review named; a Logon's `User` may be empty
        or name the subject (or its account)."""
        if answer.username is None:
            return None
        subject = self.rt.rules.config.by_service_account(answer.username)
        if subject is None or user not in (None, "", subject.name, answer.username):
            return None
        return subject

    def authenticate_source(self, caller: Caller, *, request_id: str) -> SubjectConfig | None:
        """Raw QRC clients that cannot Logon: the source-bound subject whose sourceCIDRs
        hold the caller's address, set on `caller` and audited with the source; else None.

        Only the raw QRC transport may call this (docs/policy.md)."""
        subject = self.rt.rules.authenticator.by_source(caller.source_ip)
        if subject is None:
            return None
        caller.subject = subject
        self.rt.audit.record(
            request_id=request_id,
            subject=subject.name,
            source_ip=caller.source_ip,
            transport=caller.transport,
            method="Logon",
            decision="allow",
            reason="source address in the subject's sourceCIDRs",
            outcome="ok",
            duration_ms=0.0,
        )
        return subject

    def credential(self, caller: Caller, current: SubjectConfig | None = None) -> str | None:
        """ "current", "previous" or "serviceAccount": the token the caller logged on with,
        as the current config judges it now; None once it no longer admits it (rotated
        past the grace period, a ServiceAccount token past its `exp`, the subject removed
        or bound to another account). `current`: the caller's subject as the current
        config has it, when the caller looked it up already."""
        known = caller.subject
        subject = current
        if subject is None and known is not None:
            subject = self.rt.current_subject(known.name)
        if subject is None or known is None:
            return None
        if caller.expires is not None:
            account = subject.serviceAccount
            if account is None or account != known.serviceAccount:
                return None
            return "serviceAccount" if time.time() < caller.expires else None
        if subject.serviceAccount is not None:
            return None
        return subject.credential(caller.token_hash, time.time())

    def watch(self, caller: Caller, close: Callable[[], Awaitable[None]]) -> None:
        """Close this connection once its token is no longer admitted (end of a grace period)."""
        self._watched[id(caller)] = (caller, close)

    def unwatch(self, caller: Caller) -> None:
        self._watched.pop(id(caller), None)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            for key, (caller, close) in list(self._watched.items()):
                if caller.subject is not None and self.credential(caller) is None:
                    del self._watched[key]
                    await close()

    async def _same_account(self, token: str, user: str, source_ip: str) -> SubjectConfig | None:
        """A repeated Logon with a ServiceAccount token: its subject (cached review, or a
        review under the same bounds as a first logon); None when not admitted."""
        if self.rt.token_review is None:
            return None
        try:
            answer = await self._review(token, source_ip, throttled=False)
        except (ReviewBusy, ReviewUnavailable):
            return None
        return self._service_account(answer, user) if answer is not None else None
