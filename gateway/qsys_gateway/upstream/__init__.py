"""The gateway's side of the Core: a few persistent connections shared by every client.

Sits above `qsys_protocol` and below policy and transports (it imports nothing from them).
"""

from .circuit import CircuitBreaker, CircuitState
from .errors import CoreTimeout, CoreUnavailable
from .pool import UpstreamPool
from .session import UpstreamSession

__all__ = [
    "CircuitBreaker",
    "CircuitState",
    "CoreTimeout",
    "CoreUnavailable",
    "UpstreamPool",
    "UpstreamSession",
]
