"""What every transport shares: request ids, error statuses, the services it is given.

Admission (authentication, rate limit, policy, audit) is `..admission`."""

from __future__ import annotations

import itertools
import os
import re
import time
from dataclasses import dataclass, field

from qsys_protocol.qrc.errors import ErrorCode

from ..admission import Admission
from ..client_registry import ClientRegistry
from ..runtime import Runtime

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


_PROCESS = os.urandom(8).hex()
_SEQUENCE = itertools.count(1)


def request_id(supplied: str | None = None) -> str:
    """Keep a sane client-supplied X-Request-ID, otherwise make one: 32 hex digits, a
    random prefix per process and a counter (unique across replicas and restarts without
    an `os.urandom` call per frame; ids are labels, not secrets)."""
    if supplied and _REQUEST_ID.match(supplied):
        return supplied
    return f"{_PROCESS}{next(_SEQUENCE):016x}"


@dataclass(slots=True)
class Services:
    """Everything a transport needs, built once by the app."""

    runtime: Runtime
    admission: Admission
    clients: ClientRegistry
    started: float = field(default_factory=time.monotonic)
    core_seen: bool = False
    """The Core was up at some readiness check: readiness no longer waits for it."""
