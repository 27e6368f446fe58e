"""JSON-RPC parsing and building, including hypothesis round trips."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import DEFAULT_MESSAGES, ErrorCode, QrcError
from qsys_protocol.qrc.framing import FrameDecoder, encode_frame

ids = st.integers(min_value=-(2**53), max_value=2**53) | st.text(max_size=jsonrpc.MAX_ID_LENGTH)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
params = st.none() | st.dictionaries(st.text(max_size=8), int64 | st.text(max_size=8))
methods = st.text(min_size=1, max_size=jsonrpc.MAX_METHOD_LENGTH)


def invalid(frame: bytes) -> jsonrpc.InvalidMessage:
    with pytest.raises(jsonrpc.InvalidMessage) as info:
        jsonrpc.parse_message(frame)
    return info.value


def test_request_with_id() -> None:
    msg = jsonrpc.parse_message(b'{"jsonrpc":"2.0","id":3,"method":"Control.Get","params":["A"]}')
    assert msg == jsonrpc.Request("Control.Get", ["A"], 3)
    assert isinstance(msg, jsonrpc.Request)
    assert not msg.is_notification


def test_missing_id_is_a_notification() -> None:
    msg = jsonrpc.parse_message(b'{"jsonrpc":"2.0","method":"NoOp","params":{}}')
    assert isinstance(msg, jsonrpc.Request)
    assert msg.is_notification
    assert msg.id is None


def test_jsonrpc_member_may_be_omitted_but_not_wrong() -> None:
    assert jsonrpc.parse_message(b'{"id":1,"method":"NoOp"}') == jsonrpc.Request("NoOp", None, 1)
    err = invalid(b'{"jsonrpc":"1.0","id":4,"method":"NoOp"}')
    assert err.code == ErrorCode.INVALID_REQUEST
    assert err.request_id == 4


def test_response_and_error_response() -> None:
    assert jsonrpc.parse_message(b'{"jsonrpc":"2.0","id":1,"result":true}') == jsonrpc.Response(
        1, True
    )
    msg = jsonrpc.parse_message(b'{"jsonrpc":"2.0","id":"x","error":{"code":8,"message":"m"}}')
    assert isinstance(msg, jsonrpc.Response)
    assert msg.is_error
    assert msg.error == {"code": 8, "message": "m"}
    assert invalid(b'{"id":1,"error":"boom"}').code == ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize(
    ("frame", "code", "text"),
    [
        (b"{", ErrorCode.PARSE_ERROR, "invalid JSON"),
        (b"not json", ErrorCode.PARSE_ERROR, "invalid JSON"),
        (b'{"method":"\xff\xfe"}', ErrorCode.PARSE_ERROR, "UTF-8"),
        (b"[1,2]", ErrorCode.INVALID_REQUEST, "JSON object"),
        (b"42", ErrorCode.INVALID_REQUEST, "JSON object"),
        (b'"NoOp"', ErrorCode.INVALID_REQUEST, "JSON object"),
        (b"null", ErrorCode.INVALID_REQUEST, "JSON object"),
        (b'{"id":1}', ErrorCode.INVALID_REQUEST, "method missing"),
        (b'{"params":{}}', ErrorCode.INVALID_REQUEST, "method missing"),
        (b'{"id":1,"method":5}', ErrorCode.INVALID_REQUEST, "must be a string"),
        (b'{"id":1,"method":""}', ErrorCode.INVALID_REQUEST, "must be a string"),
        (b'{"id":true,"method":"NoOp"}', ErrorCode.INVALID_REQUEST, "id must be"),
        (b'{"id":1.5,"method":"NoOp"}', ErrorCode.INVALID_REQUEST, "id must be"),
        (b'{"id":[1],"method":"NoOp"}', ErrorCode.INVALID_REQUEST, "id must be"),
    ],
)
def test_malformed_frames(frame: bytes, code: int, text: str) -> None:
    err = invalid(frame)
    assert err.code == code
    assert text in err.message


def test_limits_on_method_and_id_length() -> None:
    long_method = orjson.dumps({"id": 9, "method": "M" * (jsonrpc.MAX_METHOD_LENGTH + 1)})
    err = invalid(long_method)
    assert err.code == ErrorCode.INVALID_REQUEST
    assert err.request_id == 9
    long_id = orjson.dumps({"id": "i" * (jsonrpc.MAX_ID_LENGTH + 1), "method": "NoOp"})
    assert invalid(long_id).request_id is None


def test_deep_nesting_is_a_parse_error() -> None:
    assert invalid(b"[" * 5000 + b"]" * 5000).code == ErrorCode.PARSE_ERROR


def test_builders() -> None:
    assert jsonrpc.result_message(1, True) == {"jsonrpc": "2.0", "id": 1, "result": True}
    err = QrcError(ErrorCode.UNKNOWN_CONTROL, data={"Name": "x"})
    assert jsonrpc.error_message("a", err) == {
        "jsonrpc": "2.0",
        "id": "a",
        "error": {"code": 8, "message": "Unknown control", "data": {"Name": "x"}},
    }
    assert jsonrpc.notification_message("EngineStatus", {"State": "Active"}) == {
        "jsonrpc": "2.0",
        "method": "EngineStatus",
        "params": {"State": "Active"},
    }
    assert jsonrpc.Request("NoOp").to_dict() == {"jsonrpc": "2.0", "method": "NoOp"}


def test_every_error_code_has_a_default_message() -> None:
    for code in ErrorCode:
        assert QrcError(code).message == DEFAULT_MESSAGES[code]
    assert QrcError(123).message == "Error"


@settings(max_examples=100, deadline=None)
@given(methods, params, st.none() | ids)
def test_request_round_trip(method: str, p: object, rid: int | str | None) -> None:
    req = jsonrpc.Request(method, p, rid)
    (frame,) = FrameDecoder(2**20).feed(encode_frame(req.to_dict()))
    assert isinstance(frame, bytes)
    assert jsonrpc.parse_message(frame) == req


@settings(max_examples=150, deadline=None)
@given(ids, int64 | st.text(max_size=20) | st.booleans())
def test_result_round_trip(rid: int | str, result: object) -> None:
    msg = jsonrpc.parse_message(orjson.dumps(jsonrpc.result_message(rid, result)))
    assert msg == jsonrpc.Response(rid, result)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_never_raises_anything_but_invalid_message(data: bytes) -> None:
    code: int | None = None
    try:
        msg = jsonrpc.parse_message(data)
    except jsonrpc.InvalidMessage as exc:
        code = exc.code
    else:
        assert isinstance(msg, jsonrpc.Request | jsonrpc.Response)
    assert code in (None, ErrorCode.PARSE_ERROR, ErrorCode.INVALID_REQUEST)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error", "x"]),
        st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.lists(st.integers()),
    )
)
def test_any_object_is_a_message_or_an_invalid_request(obj: dict[str, object]) -> None:
    code: int | None = None
    try:
        jsonrpc.parse_object(obj)
    except jsonrpc.InvalidMessage as exc:
        code = exc.code
    assert code in (None, ErrorCode.INVALID_REQUEST)


@pytest.mark.parametrize(
    ("error", "code", "message", "data"),
    [
        ({"code": 7, "message": "Unknown component name"}, 7, "Unknown component name", None),
        ({"code": 8, "message": "x", "data": {"Name": "g"}}, 8, "x", {"Name": "g"}),
        ({"code": True, "message": "odd"}, -32603, "odd", None),
        ({"code": "7"}, -32603, "Server error", None),
        ({"code": -32601}, -32601, "Method not found", None),
        ("not an object", -32603, "Server error", None),
    ],
)
def test_qrc_error_from_error_object(error: Any, code: int, message: str, data: Any) -> None:
    err = QrcError.from_error_object(error)
    assert (err.code, err.message, err.data) == (code, message, data)
