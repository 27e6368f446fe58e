"""Admission's per-call order, on a real runtime, policy, audit and metrics, with a
recording upstream session in place of the Core: who → params → policy → upstream →
records; each step refuses before the next one runs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from qsys_gateway.admission import Admission, Caller, Lane, Refusal, Work
from qsys_gateway.audit import AuditLog
from qsys_gateway.inflight import TOTAL, WeightedGate
from qsys_gateway.metrics import GatewayMetrics
from qsys_gateway.ratelimit import RateLimiter
from qsys_gateway.runtime import Runtime
from qsys_protocol.config import GatewayConfig, RateConfig
from qsys_protocol.qrc.errors import ErrorCode, QrcError
from qsys_testkit.gateway import gateway_config, subject

TOKEN = "tok-0123456789abcdef0123456789abcdef"
RULES: list[dict[str, Any]] = [
    {"methods": ["StatusGet"]},
    {
        "methods": ["Component.Get", "Component.Set"],
        "components": ["Amp"],
        "controls": ["gain"],
        "valueRange": {"min": -60, "max": 0},
    },
]


class Upstream:
    """Only what a runtime configures on its pool; the calls go to `RecordingSession`."""

    def __init__(self) -> None:
        self.groups = SimpleNamespace()
        self.hub = SimpleNamespace()
        self.shares = SimpleNamespace()


class RecordingSession:
    """The caller's upstream session: records what reached it, answers or fails."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail: QrcError | None = None

    async def call(self, method: str, params: Any) -> Any:
        self.calls.append((method, params))
        if self.fail is not None:
            raise self.fail
        return {"ok": method}

    def send(self, method: str, params: Any, done: Any) -> None:
        """Nothing goes without a task here: every call takes `call`."""
        return None


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Admission, Caller, RecordingSession, Path]:
    raw = gateway_config(1, [subject("panel", TOKEN, RULES)])
    raw["audit"] = {"path": str(tmp_path / "audit.log"), "logReads": False}
    config = GatewayConfig.model_validate(raw)
    metrics = GatewayMetrics()
    audit_path = tmp_path / "audit.log"
    rt = Runtime(
        config,
        metrics=metrics,
        limiter=RateLimiter(),
        upstream=cast(Any, Upstream()),
        audit=AuditLog(str(audit_path), metrics),
    )
    admission = Admission(rt)
    caller = Caller("test", "127.0.0.1")
    found = rt.rules.authenticator.match(TOKEN, None, logon=False)
    assert found is not None
    caller.subject, caller.token_hash = found.subject, found.token_hash
    session = RecordingSession()
    caller.session = cast(Any, session)
    return admission, caller, session, audit_path


def audit_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def counted(admission: Admission, method: str, outcome: str) -> float:
    value = admission.rt.metrics.registry.get_sample_value(
        "qsys_gateway_requests_total",
        {"method": method, "subject": "panel", "transport": "test", "outcome": outcome},
    )
    return value or 0.0


async def test_allowed_call_reaches_the_session_and_is_recorded(
    setup: tuple[Admission, Caller, RecordingSession, Path],
) -> None:
    admission, caller, session, audit = setup
    params = {"Name": "Amp", "Controls": [{"Name": "gain", "Value": -10}]}
    assert await admission.call(caller, "Component.Set", params, "r1") == {"ok": "Component.Set"}
    assert [m for m, _ in session.calls] == ["Component.Set"]
    [line] = audit_lines(audit)
    assert (line["decision"], line["outcome"], line["targets"]) == ("allow", "ok", ["Amp.gain"])
    assert counted(admission, "Component.Set", "ok") == 1


async def test_revoked_credential_refused_before_params_and_policy(
    setup: tuple[Admission, Caller, RecordingSession, Path],
) -> None:
    admission, caller, session, _ = setup
    caller.token_hash = "0" * 64  # no longer what the config holds
    with pytest.raises(QrcError) as err:
        await admission.call(caller, "Component.Set", {"bad": "params"}, "r1")
    assert err.value.code == ErrorCode.UNAUTHENTICATED
    assert session.calls == []
    assert counted(admission, "Component.Set", "unauthenticated") == 1


async def test_invalid_params_refused_before_policy(
    setup: tuple[Admission, Caller, RecordingSession, Path],
) -> None:
    admission, caller, session, audit = setup
    with pytest.raises(QrcError) as err:
        await admission.call(caller, "Component.Set", {"Name": 5}, "r1")
    assert err.value.code == ErrorCode.INVALID_PARAMS
    assert session.calls == []
    assert audit_lines(audit) == []  # refused before the policy: nothing to audit as a deny
    assert counted(admission, "Component.Set", "invalid") == 1


async def test_policy_refuses_before_the_upstream_and_audits(
    setup: tuple[Admission, Caller, RecordingSession, Path],
) -> None:
    admission, caller, session, audit = setup
    for params in (
        {"Name": "Other", "Controls": [{"Name": "gain", "Value": -10}]},
        {"Name": "Amp", "Controls": [{"Name": "gain", "Value": 6}]},
    ):
        with pytest.raises(Refusal) as err:
            await admission.call(caller, "Component.Set", params, "r1")
        assert err.value.code == ErrorCode.FORBIDDEN
    assert session.calls == []
    assert [a["decision"] for a in audit_lines(audit)] == ["deny", "deny"]
    assert counted(admission, "Component.Set", "denied") == 2


async def test_core_error_passes_through_recorded(
    setup: tuple[Admission, Caller, RecordingSession, Path],
) -> None:
    admission, caller, session, audit = setup
    session.fail = QrcError(ErrorCode.UNKNOWN_COMPONENT, "Unknown component name")
    params = {"Name": "Amp", "Controls": [{"Name": "gain", "Value": -1}]}
    with pytest.raises(QrcError) as err:
        await admission.call(caller, "Component.Set", params, "r1")
    assert err.value.code == ErrorCode.UNKNOWN_COMPONENT
    [line] = audit_lines(audit)
    assert (line["decision"], line["outcome"]) == ("allow", "error")


async def test_handle_and_typed_call_agree(
    setup: tuple[Admission, Caller, RecordingSession, Path],
) -> None:
    admission, caller, _, _ = setup
    params = {"Name": "Other", "Controls": [{"Name": "gain"}]}
    reply = await admission.handle(
        caller, {"jsonrpc": "2.0", "id": 9, "method": "Component.Get", "params": params}, "r1"
    )
    assert reply is not None
    with pytest.raises(Refusal) as err:
        await admission.call(caller, "Component.Get", params, "r2")
    assert reply["error"] == err.value.to_error_object()
    ok = await admission.handle(caller, {"jsonrpc": "2.0", "id": 1, "method": "StatusGet"}, "r3")
    assert ok == {"jsonrpc": "2.0", "id": 1, "result": {"ok": "StatusGet"}}
    assert await admission.call(caller, "StatusGet", None, "r4") == {"ok": "StatusGet"}


async def test_serve_refuses_an_oversized_batch_before_the_rate_limit(
    setup: tuple[Admission, Caller, RecordingSession, Path],
) -> None:
    admission, caller, session, _ = setup
    limit = admission.rt.config.limits.maxBatchCalls
    calls = [{"jsonrpc": "2.0", "id": i, "method": "StatusGet"} for i in range(limit + 1)]
    refused = await admission.serve(caller, calls, "r1")
    assert isinstance(refused, Refusal)
    assert refused.code == ErrorCode.INVALID_REQUEST
    assert session.calls == []
    assert counted(admission, "StatusGet", "rate_limited") == 0
    replies = await admission.serve(caller, calls[:2], "r2")
    assert not isinstance(replies, Refusal)
    assert [r["result"] for r in replies if r is not None] == [{"ok": "StatusGet"}] * 2
    assert admission.rt.in_flight_gate.used == 0


def _burst(admission: Admission, caller: Caller, burst: int) -> None:
    """The subject's rate: `burst` calls at once, then one a minute."""
    assert caller.subject is not None
    rate = {"requestsPerSecond": 1 / 60, "burst": burst}
    caller.subject = caller.subject.model_copy(update={"rate": RateConfig(**rate)})
    admission.rt.rules.config.subjects[0] = caller.subject


async def test_serve_runs_work_under_the_gate_and_refuses_it_by_its_method(
    setup: tuple[Admission, Caller, RecordingSession, Path],
) -> None:
    admission, caller, _, audit = setup
    _burst(admission, caller, 1)
    held: list[int] = []

    async def run() -> Any:
        held.append(admission.rt.in_flight_gate.used)
        return await admission.call(caller, "StatusGet", None, "r1")

    work = Work("StatusGet", None, 7, run)
    assert await admission.serve(caller, [work], "r1") == [{"ok": "StatusGet"}]
    assert held == [7]
    assert admission.rt.in_flight_gate.used == 0
    refused = await admission.serve(caller, [work], "r2")
    assert isinstance(refused, Refusal)
    assert refused.code == ErrorCode.RATE_LIMITED
    assert held == [7]  # not run
    assert counted(admission, "StatusGet", "rate_limited") == 1
    assert [a["method"] for a in audit_lines(audit)] == ["StatusGet"]


async def test_serve_in_a_lane_answers_everything_there(
    setup: tuple[Admission, Caller, RecordingSession, Path],
) -> None:
    """A connection's request: the batch limit before its logon step, the rate limit
    after it; replies and refusals go to the lane, the calls run concurrently."""
    admission, caller, _, _ = setup
    sent: list[dict[str, Any]] = []
    lane = Lane(sent.append, admission.rt.in_flight_gate)
    logged_on: list[list[Any]] = []

    async def logon(calls: list[Any]) -> list[Any]:
        logged_on.append(calls)
        return calls[1:]  # the first call logged the connection on

    limit = admission.rt.config.limits.maxBatchCalls
    big = [{"jsonrpc": "2.0", "id": i, "method": "StatusGet"} for i in range(limit + 1)]
    assert await admission.serve(caller, big, "r1", lane=lane, logon=logon) == []
    assert logged_on == []
    assert [m["error"]["code"] for m in sent] == [ErrorCode.INVALID_REQUEST]
    assert sent[0]["id"] is None

    sent.clear()
    calls = [{"jsonrpc": "2.0", "id": i, "method": "StatusGet"} for i in range(4)]
    assert await admission.serve(caller, calls, "r2", lane=lane, logon=logon) == []
    await lane.drain(5.0)
    assert len(logged_on) == 1
    assert sorted(m["id"] for m in sent) == [1, 2, 3]
    assert admission.rt.in_flight_gate.used == 0

    sent.clear()
    _burst(admission, caller, 1)  # spent already by the calls above
    await admission.serve(
        caller, [*calls[1:3], {"jsonrpc": "2.0", "method": "NoOp"}], "r3", lane=lane
    )
    await lane.drain(5.0)
    assert [(m["id"], m["error"]["code"]) for m in sent] == [
        (1, ErrorCode.RATE_LIMITED),
        (2, ErrorCode.RATE_LIMITED),
    ]  # a notification is not answered


async def test_a_lane_answers_calls_that_fail_or_are_cut_short() -> None:
    """Every request in a connection's lane is answered: a call that raises gets -32000,
    one still running when the connection closes gets -32050; a notification nothing."""
    sent: list[dict[str, Any]] = []
    gate = WeightedGate(TOTAL)
    lane = Lane(sent.append, gate)
    never = asyncio.Event()

    async def broken() -> dict[str, Any] | None:
        raise RuntimeError("bug")

    async def slow() -> dict[str, Any] | None:
        await never.wait()
        return None

    await lane.start({"jsonrpc": "2.0", "id": 1, "method": "StatusGet"}, broken)
    await lane.start({"jsonrpc": "2.0", "id": 2, "method": "StatusGet"}, slow)
    await lane.start({"jsonrpc": "2.0", "method": "NoOp"}, slow)
    await asyncio.sleep(0)
    assert gate.used == 2
    await lane.cancel()
    assert sorted((m["id"], m["error"]["code"]) for m in sent) == [
        (1, ErrorCode.SERVER_ERROR),
        (2, ErrorCode.CORE_UNAVAILABLE),
    ]
    assert gate.used == 0


async def test_a_lane_keeps_no_task_of_a_call_that_ended() -> None:
    """A call's task leaves the lane when it ends, answered, failed, cancelled while
    running or cancelled before it ever ran, and gives back its weight."""
    sent: list[dict[str, Any]] = []
    gate = WeightedGate(TOTAL)
    lane = Lane(sent.append, gate)
    never = asyncio.Event()

    async def quick() -> dict[str, Any] | None:
        return {"jsonrpc": "2.0", "id": 1, "result": True}

    async def slow() -> dict[str, Any] | None:
        await never.wait()
        return None

    assert lane.try_start({"jsonrpc": "2.0", "id": 1, "method": "NoOp"}, quick)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sent == [{"jsonrpc": "2.0", "id": 1, "result": True}]
    assert not lane._tasks
    assert lane.try_start({"jsonrpc": "2.0", "id": 2, "method": "NoOp"}, slow)
    await asyncio.sleep(0)
    assert lane.try_start({"jsonrpc": "2.0", "id": 3, "method": "NoOp"}, slow)
    await lane.cancel()  # id 3 is cancelled before its task ever ran
    assert not lane._tasks
    assert sorted((m["id"], m["error"]["code"]) for m in sent[1:]) == [
        (2, ErrorCode.CORE_UNAVAILABLE),
        (3, ErrorCode.CORE_UNAVAILABLE),
    ]
    assert gate.used == 0
