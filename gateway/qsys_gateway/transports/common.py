"""What every transport shares: request ids, authentication, rate limiting, error statuses."""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from ..auth import MAX_USER_CHARS
from ..clients import ClientRegistry
from ..config import SubjectConfig
from ..pipeline import Pipeline
from ..qrc.errors import ErrorCode, QrcError
from ..runtime import Runtime

log = logging.getLogger("qsys_gateway.auth")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

HTTP_STATUS: dict[int, int] = {
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.CORE_UNAVAILABLE: 503,
    ErrorCode.CORE_TIMEOUT: 504,
    ErrorCode.PARSE_ERROR: 400,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.METHOD_NOT_FOUND: 404,
    ErrorCode.INVALID_PARAMS: 400,
}


def request_id(supplied: str | None = None) -> str:
    """Keep a sane client-supplied X-Request-ID, otherwise make one."""
    if supplied and _REQUEST_ID.match(supplied):
        return supplied
    return uuid.uuid4().hex


@dataclass(slots=True)
class Services:
    """Everything a transport needs, built once by the app."""

    runtime: Runtime
    pipeline: Pipeline
    clients: ClientRegistry


class Refusal(QrcError):
    def __init__(self, code: int, message: str, retry_after: float = 0.0) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after


def authenticate(
    svc: Services,
    *,
    token: str | None,
    user: str | None,
    source_ip: str,
    transport: str,
    rid: str,
    obj: Any = None,
) -> SubjectConfig:
    """Check a bearer token (or a Logon user + token).

    Failures are throttled per source and presented subject (`throttle_key`); a valid
    token is always admitted, so one guessing client behind a NAT or an ingress never
    locks out the correct tokens of the room."""
    rt = svc.runtime
    subject = None
    if token:
        auth = rt.rules.authenticator
        subject = auth.authenticate(token) if user is None else auth.logon(user, token)
    key = throttle_key(source_ip, user)
    if subject is not None:
        rt.throttle.success(key)
        return subject
    wait = rt.throttle.retry_after(key)
    if wait > 0:
        err = Refusal(ErrorCode.RATE_LIMITED, "Too many failed authentications; retry later", wait)
        _fail(svc, source_ip, transport, rid, obj, err, "auth throttled")
        raise err
    rt.throttle.failure(key)
    err = Refusal(ErrorCode.UNAUTHENTICATED, "Unauthenticated")
    _fail(svc, source_ip, transport, rid, obj, err, "invalid or missing token")
    raise err


def throttle_key(source_ip: str, user: str | None) -> str:
    """Failed logons are counted per source and presented subject name (bearer: none)."""
    if not user:
        return source_ip
    return f"{source_ip}\x00{user[:MAX_USER_CHARS]}"


def _fail(
    svc: Services, source_ip: str, transport: str, rid: str, obj: Any, err: QrcError, reason: str
) -> None:
    svc.runtime.metrics.auth_failures.labels(transport).inc()
    log.warning(
        "authentication failed",
        extra={"request_id": rid, "source_ip": source_ip, "transport": transport, "reason": reason},
    )
    svc.pipeline.reject("-", transport, source_ip, obj or {"method": "Logon"}, err, rid, reason)


async def rate_limit(
    svc: Services,
    subject: SubjectConfig,
    calls: list[Any],
    transport: str,
    source_ip: str,
    rid: str,
) -> QrcError | None:
    """Charge one token per call; on refusal audit each call and return the error."""
    rt = svc.runtime
    rate = rt.config.rate_for(subject)
    decision = await rt.limiter.hit(subject.name, rate, max(1, len(calls)))
    if decision.allowed:
        return None
    err = Refusal(ErrorCode.RATE_LIMITED, "Rate limited", decision.retry_after)
    for obj in calls or [{}]:
        svc.pipeline.reject(
            subject.name, transport, source_ip, obj, err, rid, "rate limit exceeded"
        )
    return err
