"""Error codes spoken by a Core and by the gateway."""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ErrorCode(IntEnum):
    # JSON-RPC 2.0
    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    SERVER_ERROR = -32603
    STANDBY = -32604
    # QRC-specific
    INVALID_PAGE_REQUEST_ID = 2
    BAD_PAGE_REQUEST = 3
    MISSING_FILE = 4
    CHANGE_GROUPS_EXHAUSTED = 5
    UNKNOWN_CHANGE_GROUP = 6
    UNKNOWN_COMPONENT = 7
    UNKNOWN_CONTROL = 8
    ILLEGAL_MIXER_CHANNEL = 9
    LOGON_REQUIRED = 10
    # Gateway
    UNAUTHENTICATED = -32001
    FORBIDDEN = -32003
    CORE_TIMEOUT = -32008
    RATE_LIMITED = -32029
    CORE_UNAVAILABLE = -32050


DEFAULT_MESSAGES: dict[int, str] = {
    ErrorCode.PARSE_ERROR: "Parse error",
    ErrorCode.INVALID_REQUEST: "Invalid request",
    ErrorCode.METHOD_NOT_FOUND: "Method not found",
    ErrorCode.INVALID_PARAMS: "Invalid params",
    ErrorCode.SERVER_ERROR: "Server error",
    ErrorCode.STANDBY: "Core is on standby",
    ErrorCode.INVALID_PAGE_REQUEST_ID: "Invalid page request ID",
    ErrorCode.BAD_PAGE_REQUEST: "Bad page request",
    ErrorCode.MISSING_FILE: "Missing file",
    ErrorCode.CHANGE_GROUPS_EXHAUSTED: "Change groups exhausted",
    ErrorCode.UNKNOWN_CHANGE_GROUP: "Unknown change group",
    ErrorCode.UNKNOWN_COMPONENT: "Unknown component name",
    ErrorCode.UNKNOWN_CONTROL: "Unknown control",
    ErrorCode.ILLEGAL_MIXER_CHANNEL: "Illegal mixer channel index",
    ErrorCode.LOGON_REQUIRED: "Logon required",
    ErrorCode.UNAUTHENTICATED: "Unauthenticated",
    ErrorCode.FORBIDDEN: "Forbidden by policy",
    ErrorCode.CORE_TIMEOUT: "Core timeout",
    ErrorCode.RATE_LIMITED: "Rate limited",
    ErrorCode.CORE_UNAVAILABLE: "Core unavailable",
}


class QrcError(Exception):
    """An error that becomes a JSON-RPC error object on the wire."""

    def __init__(self, code: int, message: str | None = None, data: Any = None) -> None:
        self.code = int(code)
        self.message = message or DEFAULT_MESSAGES.get(self.code, "Error")
        self.data = data
        super().__init__(f"{self.code}: {self.message}")

    @classmethod
    def from_error_object(cls, error: Any) -> QrcError:
        """The error a JSON-RPC error object carries, whoever sent it: a code that is not
        an integer becomes `SERVER_ERROR`, a missing message the code's default."""
        if not isinstance(error, dict):
            return cls(ErrorCode.SERVER_ERROR)
        code = error.get("code")
        message = error.get("message")
        if not isinstance(code, int) or isinstance(code, bool):
            code = ErrorCode.SERVER_ERROR
        return cls(
            code,
            str(message) if message is not None else None,
            error.get("data"),
        )

    def to_error_object(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            obj["data"] = self.data
        return obj


def unknown_change_group(group_id: str | int) -> QrcError:
    """Error 6 with a Core's text (`Change group '<id>' does not exist`, as Cores and the
    Designer emulator answer it)."""
    return QrcError(
        ErrorCode.UNKNOWN_CHANGE_GROUP, f"Change group '{str(group_id)[:64]}' does not exist"
    )
