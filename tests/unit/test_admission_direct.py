"""A logged-on connection's reads run without a task (`Admission._start_direct`): the
same steps and records as a call in a task, the reply sent as the Core's answer is
read, and nothing held once the call ends, fails or the connection closes under it.
On a real runtime, policy, audit and metrics; the session hands each read to the test
instead of a Core."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest
from test_admission_order import audit_lines, counted
from test_admission_order import setup as setup

from qsys_gateway.admission import Admission, Caller, Lane
from qsys_gateway.upstream.errors import CoreTimeout
from qsys_gateway.upstream.session import Done
from qsys_protocol.qrc.errors import ErrorCode


class Pending:
    """One read the session took: the test ends it with `done`."""

    def __init__(self, method: str, params: Any, done: Done) -> None:
        self.method = method
        self.params = params
        self.done = done
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class DirectSession:
    """Takes every read at once (`send`), unless `refuse` is set; writes go to `call`."""

    def __init__(self) -> None:
        self.sent: list[Pending] = []
        self.calls: list[str] = []
        self.refuse = False

    def send(self, method: str, params: Any, done: Done) -> Pending | None:
        if self.refuse:
            return None
        pending = Pending(method, params, done)
        self.sent.append(pending)
        return pending

    async def call(self, method: str, params: Any) -> Any:
        self.calls.append(method)
        return {"ok": method}


@pytest.fixture
async def direct(
    setup: tuple[Admission, Caller, Any, Path],
) -> tuple[Admission, Caller, DirectSession, Lane, list[dict[str, Any]], Path]:
    admission, caller, _, audit_path = setup
    session = DirectSession()
    caller.session = cast(Any, session)
    sent: list[dict[str, Any]] = []
    lane = Lane(sent.append, admission.rt.in_flight_gate)
    return admission, caller, session, lane, sent, audit_path


def _get(i: int, gain: float | None = None) -> dict[str, Any]:
    controls = [{"Name": "gain"} if gain is None else {"Name": "gain", "Value": gain}]
    method = "Component.Get" if gain is None else "Component.Set"
    return {
        "jsonrpc": "2.0",
        "id": i,
        "method": method,
        "params": {"Name": "Amp", "Controls": controls},
    }


def _idle(admission: Admission, lane: Lane) -> bool:
    return admission.rt.in_flight_gate.used == 0 and admission.rt.in_flight == 0 and not lane._calls


async def test_a_read_is_answered_when_the_core_answers_with_no_task(
    direct: tuple[Admission, Caller, DirectSession, Lane, list[dict[str, Any]], Path],
) -> None:
    admission, caller, session, lane, sent, _ = direct
    tasks = len(asyncio.all_tasks())
    assert admission.serve_now(caller, [_get(1), _get(2)], "r1", lane) is None
    assert len(asyncio.all_tasks()) == tasks  # no task per call
    assert [p.method for p in session.sent] == ["Component.Get", "Component.Get"]
    wire = {"Name": "Amp", "Controls": [{"Name": "gain"}]}
    assert session.sent[0].params.model_dump(exclude_none=True) == wire
    assert sent == []
    assert admission.rt.in_flight == 2

    session.sent[1].done({"Name": "Amp", "Controls": []}, None)
    session.sent[0].done(None, CoreTimeout(5))
    assert sent[0] == {"jsonrpc": "2.0", "id": 2, "result": {"Name": "Amp", "Controls": []}}
    assert sent[1]["id"] == 1
    assert sent[1]["error"]["code"] == ErrorCode.CORE_TIMEOUT
    assert counted(admission, "Component.Get", "ok") == 1
    assert counted(admission, "Component.Get", "timeout") == 1
    assert _idle(admission, lane)


async def test_refused_reads_are_answered_at_once_and_the_rest_take_a_task(
    direct: tuple[Admission, Caller, DirectSession, Lane, list[dict[str, Any]], Path],
) -> None:
    admission, caller, session, lane, sent, audit_path = direct
    denied = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "Component.Get",
        "params": {"Name": "Other", "Controls": [{"Name": "gain"}]},
    }
    invalid = {"jsonrpc": "2.0", "id": 4, "method": "Component.Get", "params": {"Controls": 1}}
    write = _get(5, gain=-10)
    assert admission.serve_now(caller, [denied, invalid, write], "r1", lane) is None
    codes = {m["id"]: m["error"]["code"] for m in sent}
    assert codes == {3: ErrorCode.FORBIDDEN, 4: ErrorCode.INVALID_PARAMS}
    assert [line["outcome"] for line in audit_lines(audit_path)] == ["denied"]
    assert session.sent == []  # the write runs in a task, through `call`
    await lane.drain(5.0)
    assert session.calls == ["Component.Set"]
    assert sent[-1] == {"jsonrpc": "2.0", "id": 5, "result": {"ok": "Component.Set"}}

    sent.clear()
    session.refuse = True  # the Core cannot take it now: the call waits in a task
    assert admission.serve_now(caller, [_get(6)], "r2", lane) is None
    await lane.drain(5.0)
    assert session.calls == ["Component.Set", "Component.Get"]
    assert sent == [{"jsonrpc": "2.0", "id": 6, "result": {"ok": "Component.Get"}}]
    assert _idle(admission, lane)


async def test_a_closing_connection_answers_its_reads_in_flight_and_holds_nothing(
    direct: tuple[Admission, Caller, DirectSession, Lane, list[dict[str, Any]], Path],
) -> None:
    admission, caller, session, lane, sent, _ = direct
    admission.serve_now(caller, [_get(1), _get(2)], "r1", lane)
    session.sent[0].done({"Name": "Amp", "Controls": []}, None)
    drained = asyncio.ensure_future(lane.drain(5.0))
    await asyncio.sleep(0.01)
    assert not drained.done()  # one read is still in flight
    await lane.cancel()
    await asyncio.wait_for(drained, 1.0)
    assert [p.cancelled for p in session.sent] == [False, True]
    assert sent[1]["id"] == 2
    assert sent[1]["error"]["code"] == ErrorCode.CORE_UNAVAILABLE
    session.sent[1].done({"late": True}, None)  # an answer after the close is not sent
    assert len(sent) == 2
    assert _idle(admission, lane)


async def test_drain_ends_when_the_last_read_is_answered(
    direct: tuple[Admission, Caller, DirectSession, Lane, list[dict[str, Any]], Path],
) -> None:
    admission, caller, session, lane, sent, _ = direct
    admission.serve_now(caller, [_get(1)], "r1", lane)
    drained = asyncio.ensure_future(lane.drain(5.0))
    await asyncio.sleep(0.01)
    assert not drained.done()
    session.sent[0].done({"Name": "Amp", "Controls": []}, None)
    await asyncio.wait_for(drained, 1.0)
    assert [m["id"] for m in sent] == [1]


async def test_a_failure_in_the_records_is_an_internal_error_not_a_lost_call(
    direct: tuple[Admission, Caller, DirectSession, Lane, list[dict[str, Any]], Path],
) -> None:
    admission, caller, session, lane, sent, _ = direct
    admission.serve_now(caller, [_get(1), _get(2)], "r1", lane)
    session.sent[0].done(None, RuntimeError("not a QrcError"))
    assert sent[0]["id"] == 1
    assert sent[0]["error"]["code"] == ErrorCode.SERVER_ERROR
    assert "not a QrcError" not in str(sent[0])
    session.sent[1].done({"Name": "Amp", "Controls": []}, None)
    assert sent[1]["id"] == 2
    assert "result" in sent[1]
    assert _idle(admission, lane)


async def test_a_read_after_a_call_in_a_task_waits_its_turn(
    direct: tuple[Admission, Caller, DirectSession, Lane, list[dict[str, Any]], Path],
) -> None:
    """A Core answers a connection's calls in order, so a client may pipeline a Set and
    the Get that reads it: a read never overtakes a call still waiting for its task."""
    admission, caller, session, lane, sent, _ = direct
    admission.serve_now(caller, [_get(1, gain=-10), _get(2)], "r1", lane)
    assert session.sent == []  # the read went after the write, in a task
    await lane.drain(5.0)
    assert session.calls == ["Component.Set", "Component.Get"]
    assert sorted(m["id"] for m in sent) == [1, 2]
    admission.serve_now(caller, [_get(3)], "r2", lane)  # nothing ahead of it now
    assert [p.method for p in session.sent] == ["Component.Get"]
    session.sent[0].done({"Name": "Amp", "Controls": []}, None)
    assert _idle(admission, lane)
