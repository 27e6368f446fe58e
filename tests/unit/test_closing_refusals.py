"""What a raw QRC client's unrun calls get when the gateway closes its socket."""

from __future__ import annotations

import orjson

from qsys_gateway.transports.connected import refusals
from qsys_protocol.qrc.errors import ErrorCode, QrcError

ERR = QrcError(ErrorCode.CORE_UNAVAILABLE, "Core unavailable")


def frame(obj: object) -> bytes:
    return orjson.dumps(obj)


def test_each_request_is_answered_under_its_id() -> None:
    calls = [
        {"jsonrpc": "2.0", "id": 1, "method": "Logon", "params": {}},
        {"jsonrpc": "2.0", "id": "a", "method": "NoOp"},
        {"jsonrpc": "2.0", "method": "NoOp"},  # a notification: no answer
        {"jsonrpc": "2.0", "id": True, "method": "NoOp"},  # not an id a client waits on
        {"jsonrpc": "2.0", "id": 9, "result": True},  # a response: no answer
    ]
    got = refusals(frame(calls), ERR, 100)
    assert [(m["id"], m["error"]["code"]) for m in got] == [(1, -32050), ("a", -32050)]
    assert refusals(frame(calls[0]), ERR, 100)[0]["id"] == 1


def test_garbage_and_oversized_batches_stay_bounded() -> None:
    assert refusals(b"{not json", ERR, 100) == []
    big = [{"jsonrpc": "2.0", "id": i, "method": "NoOp"} for i in range(1000)]
    (only,) = refusals(frame(big), ERR, 100)
    assert only["id"] is None
    assert only["error"]["code"] == ErrorCode.INVALID_REQUEST
