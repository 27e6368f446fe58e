"""JSON-RPC 2.0 messages as QRC uses them.

Parsing never raises anything but `InvalidMessage`, which carries the JSON-RPC
error to answer with and the request id when one could be read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from .errors import ErrorCode, QrcError

RequestId = int | str
MAX_METHOD_LENGTH: Final = 128
MAX_ID_LENGTH: Final = 256
_NO_PARAMS: Final[Any] = None


class InvalidMessage(QrcError):
    def __init__(self, code: int, message: str, request_id: RequestId | None = None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


@dataclass(slots=True)
class Request:
    """A call (with `id`) or a notification (`id` is None)."""

    method: str
    params: Any = _NO_PARAMS
    id: RequestId | None = None

    @property
    def is_notification(self) -> bool:
        return self.id is None

    def to_dict(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": self.method}
        if self.params is not None:
            msg["params"] = self.params
        if self.id is not None:
            msg["id"] = self.id
        return msg


@dataclass(slots=True)
class Response:
    id: RequestId | None
    result: Any = None
    error: dict[str, Any] | None = None

    @property
    def is_error(self) -> bool:
        return self.error is not None


Message = Request | Response


def decode_json(frame: bytes | str) -> Any:
    """Decode one JSON document; invalid UTF-8, bad syntax and excessive nesting are -32700."""
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(ErrorCode.PARSE_ERROR, _parse_error_text(exc)) from None


def _parse_error_text(exc: orjson.JSONDecodeError) -> str:
    reason = str(exc.msg) if hasattr(exc, "msg") else "invalid JSON"
    if "utf-8" in reason.lower() or "surrogate" in reason.lower():
        return "Parse error: invalid UTF-8"
    if "recursion" in reason.lower():
        return "Parse error: nesting too deep"
    return "Parse error: invalid JSON"


def _read_id(obj: dict[str, Any]) -> RequestId | None:
    if "id" not in obj:
        return None
    rid = obj["id"]
    if rid is None:
        return None
    if isinstance(rid, bool) or not isinstance(rid, int | str):
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST, "Invalid request: id must be a number or string"
        )
    if isinstance(rid, str) and len(rid) > MAX_ID_LENGTH:
        raise InvalidMessage(ErrorCode.INVALID_REQUEST, "Invalid request: id too long")
    return rid


def parse_object(obj: Any) -> Message:
    """Interpret one decoded JSON value as a JSON-RPC request, notification or response."""
    if not isinstance(obj, dict):
        raise InvalidMessage(ErrorCode.INVALID_REQUEST, "Invalid request: expected a JSON object")
    rid = _read_id(obj)
    version = obj.get("jsonrpc", "2.0")
    if version != "2.0":
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST, 'Invalid request: jsonrpc must be "2.0"', rid
        )
    method = obj.get("method")
    if method is None:
        if "result" in obj or "error" in obj:
            error = obj.get("error")
            if error is not None and not isinstance(error, dict):
                raise InvalidMessage(ErrorCode.INVALID_REQUEST, "Invalid response: bad error", rid)
            return Response(id=rid, result=obj.get("result"), error=error)
        raise InvalidMessage(ErrorCode.INVALID_REQUEST, "Invalid request: method missing", rid)
    if not isinstance(method, str) or not method:
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST, "Invalid request: method must be a string", rid
        )
    if len(method) > MAX_METHOD_LENGTH:
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST, "Invalid request: method name too long", rid
        )
    return Request(method=method, params=obj.get("params"), id=rid)


def parse_message(frame: bytes | str) -> Message:
    return parse_object(decode_json(frame))


def result_message(request_id: RequestId | None, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_message(request_id: RequestId | None, error: QrcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_error_object()}


def notification_message(method: str, params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}
