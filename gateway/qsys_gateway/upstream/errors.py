"""The gateway's own upstream errors: both are `QrcError`s, so transports answer them as is."""

from __future__ import annotations

from qsys_protocol.qrc.errors import ErrorCode, QrcError


class CoreUnavailable(QrcError):
    """-32050: no connection, circuit open, Core on standby, or too many pending calls."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(ErrorCode.CORE_UNAVAILABLE, f"Core unavailable: {message}")
        self.retry_after = max(0.0, float(retry_after))


class CoreTimeout(QrcError):
    """-32008: the Core did not answer in time."""

    def __init__(self, timeout: float) -> None:
        super().__init__(ErrorCode.CORE_TIMEOUT, f"Core did not answer within {timeout:g}s")
