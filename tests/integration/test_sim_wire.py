"""Framing and malformed input over a real socket; Logon-required mode; idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qsys_core_sim.server import CoreSimulator
from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import ErrorCode
from qsys_protocol.qrc.methods import METHODS

pytestmark = pytest.mark.timeout(30)


async def assert_still_works(raw: Any, rid: int = 999) -> None:
    reply = await raw.call("Control.Get", ["MainGain"], rid=rid)
    assert reply["id"] == rid
    METHODS["Control.Get"].result.validate_python(reply["result"])


async def test_many_frames_in_one_write(raw_client: Any) -> None:
    batch = b"".join(
        orjson.dumps({"jsonrpc": "2.0", "id": i, "method": "NoOp", "params": {}}) + b"\x00"
        for i in range(200)
    )
    await raw_client.send(batch)
    replies = [await raw_client.recv_reply() for _ in range(200)]
    assert [r["id"] for r in replies] == list(range(200))
    assert all(r["result"] is True for r in replies)


async def test_frame_split_across_writes(raw_client: Any) -> None:
    data = orjson.dumps({"jsonrpc": "2.0", "id": 42, "method": "StatusGet", "params": 0}) + b"\x00"
    for i in range(0, len(data), 5):
        await raw_client.send(data[i : i + 5])
        await asyncio.sleep(0.002)
    reply = await raw_client.recv_reply()
    assert reply["id"] == 42
    METHODS["StatusGet"].result.validate_python(reply["result"])


async def test_two_frames_split_at_odd_places(raw_client: Any) -> None:
    a = orjson.dumps({"id": 1, "method": "NoOp", "params": {}}) + b"\x00"
    b = orjson.dumps({"id": 2, "method": "Control.Get", "params": ["MainMute"]}) + b"\x00"
    data = a + b
    await raw_client.send(data[:3])
    await asyncio.sleep(0.01)
    await raw_client.send(data[3 : len(a) + 4])
    await asyncio.sleep(0.01)
    await raw_client.send(data[len(a) + 4 :])
    assert (await raw_client.recv_reply())["id"] == 1
    assert (await raw_client.recv_reply())["result"][0]["Name"] == "MainMute"


@pytest.mark.parametrize(
    ("frame", "code", "rid"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":', ErrorCode.PARSE_ERROR, None),
        (b'{"jsonrpc":"2.0","id":1,"method":"\xff\xfe\xfd"}', ErrorCode.PARSE_ERROR, None),
        (b"\xc3\x28", ErrorCode.PARSE_ERROR, None),
        (b"[1,2,3]", ErrorCode.INVALID_REQUEST, None),
        (b"17", ErrorCode.INVALID_REQUEST, None),
        (b'"NoOp"', ErrorCode.INVALID_REQUEST, None),
        (b'{"jsonrpc":"2.0","params":{}}', ErrorCode.INVALID_REQUEST, None),
        (b'{"jsonrpc":"2.0","id":5}', ErrorCode.INVALID_REQUEST, 5),
        (b'{"jsonrpc":"2.0","id":6,"method":["NoOp"]}', ErrorCode.INVALID_REQUEST, 6),
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"NoOp"}', ErrorCode.INVALID_REQUEST, None),
        (b'{"jsonrpc":"1.0","id":7,"method":"NoOp"}', ErrorCode.INVALID_REQUEST, 7),
        (
            b'{"jsonrpc":"2.0","id":8,"method":"Control.Get","params":"MainGain"}',
            ErrorCode.INVALID_PARAMS,
            8,
        ),
    ],
)
async def test_malformed_input_gets_an_error_and_the_connection_survives(
    raw_client: Any, frame: bytes, code: int, rid: int | None
) -> None:
    await raw_client.send(frame + b"\x00")
    reply = await raw_client.recv_reply()
    assert reply["jsonrpc"] == "2.0"
    assert reply["id"] == rid
    assert reply["error"]["code"] == code
    assert isinstance(reply["error"]["message"], str)
    await assert_still_works(raw_client)


async def test_frame_over_the_limit(qsys_simulator: Any, make_raw: Any) -> None:
    sim: CoreSimulator = await qsys_simulator(max_frame_bytes=4096)
    raw = await make_raw(sim.port)
    await raw.recv()  # EngineStatus
    huge = orjson.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "Control.Get", "params": ["x" * 10000]}
    )
    # Sent in pieces, as a socket would deliver it.
    for i in range(0, len(huge), 1000):
        await raw.send(huge[i : i + 1000])
    await raw.send(b"\x00")
    reply = await raw.recv_reply()
    assert reply["id"] is None
    assert reply["error"]["code"] == ErrorCode.INVALID_REQUEST
    assert "too large" in reply["error"]["message"]
    await assert_still_works(raw)
    # Exactly one error for one oversized frame.
    await raw.send(orjson.dumps({"id": 2, "method": "NoOp", "params": {}}) + b"\x00")
    assert (await raw.recv_reply())["id"] == 2


async def test_blank_frames_are_ignored(raw_client: Any) -> None:
    await raw_client.send(b"\x00\x00  \x00")
    await assert_still_works(raw_client, rid=3)


async def test_string_ids_are_echoed(raw_client: Any) -> None:
    await raw_client.send_json({"jsonrpc": "2.0", "id": "abc-1", "method": "NoOp", "params": {}})
    assert (await raw_client.recv_reply()) == {"jsonrpc": "2.0", "id": "abc-1", "result": True}


async def test_responses_sent_to_the_core_are_ignored(raw_client: Any) -> None:
    await raw_client.send_json({"jsonrpc": "2.0", "id": 77, "result": True})
    await assert_still_works(raw_client, rid=78)


async def test_missing_id_gets_no_reply(raw_client: Any) -> None:
    await raw_client.send_json(
        {"jsonrpc": "2.0", "method": "Control.Set", "params": {"Name": "MainGain", "Value": -9}}
    )
    await raw_client.send_json({"jsonrpc": "2.0", "method": "Control.Set", "params": {}})
    reply = await raw_client.call("Control.Get", ["MainGain"], rid=11)
    # The first frame that comes back answers id 11: the notifications produced nothing.
    assert reply["id"] == 11
    assert reply["result"][0]["Value"] == -9.0


# ---- Logon-required mode ------------------------------------------------------


async def test_logon_required(qsys_simulator: Any, make_raw: Any) -> None:
    sim: CoreSimulator = await qsys_simulator(username="admin", password="s3cret")
    raw = await make_raw(sim.port)
    assert (await raw.recv())["method"] == "EngineStatus"
    # Open methods work before Logon; everything else is error 10.
    assert (await raw.call("NoOp", {}, rid=1))["result"] is True
    assert (await raw.call("StatusGet", 0, rid=2))["result"]["State"] == "Active"
    for rid, (method, params) in enumerate(
        [
            ("Control.Get", ["MainGain"]),
            ("Component.GetComponents", {}),
            ("ChangeGroup.AddControl", {"Id": 1, "Controls": ["MainGain"]}),
            ("ChangeGroup.AutoPoll", {"Id": 1, "Rate": 1}),
            ("Snapshot.Save", {"Name": "Venue Scenes", "Bank": 1}),
        ],
        start=10,
    ):
        reply = await raw.call(method, params, rid=rid)
        assert reply["error"]["code"] == ErrorCode.LOGON_REQUIRED, method
    bad = await raw.call("Logon", {"User": "admin", "Password": "wrong"}, rid=20)
    assert bad["error"]["code"] == ErrorCode.LOGON_REQUIRED
    assert "wrong" not in orjson.dumps(bad).decode()
    assert (await raw.call("Control.Get", ["MainGain"], rid=21))["error"]["code"] == 10
    good = await raw.call("Logon", {"User": "admin", "Password": "s3cret"}, rid=22)
    assert good["result"] is True
    await assert_still_works(raw)
    # Logon is per connection.
    other = await make_raw(sim.port)
    await other.recv()
    assert (await other.call("Control.Get", ["MainGain"], rid=1))["error"]["code"] == 10


async def test_logon_without_users_is_accepted(raw_client: Any) -> None:
    reply = await raw_client.call("Logon", {"User": "anyone", "Password": "x"}, rid=1)
    assert reply["result"] is True


# ---- idle timeout ---------------------------------------------------------------


async def test_idle_socket_is_closed(qsys_simulator: Any, make_raw: Any) -> None:
    sim: CoreSimulator = await qsys_simulator(idle_timeout=0.3)
    raw = await make_raw(sim.port)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await raw.closed_by_peer(timeout=5)
    elapsed = loop.time() - start
    assert 0.25 <= elapsed < 4
    async with asyncio.timeout(5):
        while sim.connections:
            await asyncio.sleep(0.01)


async def test_talking_socket_stays_open_and_autopoll_does_not_count(
    qsys_simulator: Any, make_raw: Any
) -> None:
    sim: CoreSimulator = await qsys_simulator(idle_timeout=0.4)
    raw = await make_raw(sim.port)
    await raw.recv()
    await raw.call("ChangeGroup.AddControl", {"Id": 1, "Controls": ["MainGain"]}, rid=1)
    await raw.call("ChangeGroup.AutoPoll", {"Id": 1, "Rate": 0.05}, rid=2)
    for i in range(8):  # 8 x 0.1 s = twice the idle timeout
        await asyncio.sleep(0.1)
        await raw.send_json({"jsonrpc": "2.0", "id": 100 + i, "method": "NoOp", "params": {}})
    assert len(sim.connections) == 1
    # Now silent: pushes from the Core do not keep the socket alive.
    sim.set_control("MainGain", -3)
    assert await raw.closed_by_peer(timeout=5)


# ---- property: any bytes get exactly the replies JSON-RPC promises ----------------

_frames = st.lists(
    st.one_of(
        st.binary(max_size=60),
        st.builds(
            lambda rid, method, params: orjson.dumps(
                {k: v for k, v in (("id", rid), ("method", method), ("params", params)) if v != "-"}
            ),
            st.sampled_from(["-", None, 1, "x", 2.5, True, [1]]),
            st.sampled_from(["-", "NoOp", "StatusGet", "Control.Get", "Bogus", 3, ""]),
            st.sampled_from(["-", None, {}, [], ["MainGain"], {"Id": 1}, 0, "s"]),
        ),
    ).map(lambda b: b.replace(b"\x00", b"")),
    min_size=1,
    max_size=8,
)


def _expected_replies(frame: bytes) -> int:
    if not frame.strip():
        return 0
    try:
        msg = jsonrpc.parse_message(frame)
    except jsonrpc.InvalidMessage:
        return 1
    return 1 if isinstance(msg, jsonrpc.Request) and msg.id is not None else 0


async def _exchange(frames: list[bytes]) -> tuple[int, int]:
    async with CoreSimulator(port=0, idle_timeout=30) as sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        try:
            await reader.readuntil(b"\x00")  # EngineStatus
            sentinel = {"jsonrpc": "2.0", "id": "sentinel", "method": "NoOp", "params": {}}
            writer.write(b"\x00".join(frames) + b"\x00" + orjson.dumps(sentinel) + b"\x00")
            replies = 0
            async with asyncio.timeout(5):
                while True:
                    reply = orjson.loads((await reader.readuntil(b"\x00"))[:-1])
                    assert reply.get("jsonrpc") == "2.0"
                    if "method" in reply:
                        continue
                    assert ("result" in reply) != ("error" in reply)
                    if reply["id"] == "sentinel":
                        assert reply["result"] is True
                        return replies, len(sim.connections)
                    replies += 1
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_frames)
def test_any_frames_get_the_promised_replies_and_the_socket_survives(frames: list[bytes]) -> None:
    replies, connections = asyncio.run(_exchange(frames))
    assert replies == sum(_expected_replies(f) for f in frames)
    assert connections == 1
