"""The upstream layer against real sockets to in-process simulated Cores (no mocks)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from qsys_core_sim.server import CoreSimulator
from qsys_gateway.metrics import GatewayMetrics
from qsys_gateway.upstream import CircuitState, UpstreamPool, UpstreamSession, pool
from qsys_gateway.upstream.pool import COALESCE
from qsys_protocol.config import CoreConfig
from qsys_protocol.qrc.errors import ErrorCode, QrcError

pytestmark = pytest.mark.timeout(30)

PRIMARY = "127.0.0.1"
SECONDARY = "127.0.0.2"
FAST: dict[str, Any] = {"backoff_base": 0.05, "backoff_cap": 0.3}

UpstreamFactory = Callable[..., Awaitable[UpstreamPool]]


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def call_until_ok(up: UpstreamPool | UpstreamSession, method: str, params: Any) -> Any:
    """Retry a call until the Core answers it (bounded by the test timeout)."""
    while True:
        try:
            if isinstance(up, UpstreamPool):
                return await up.forward(method, params)
            return await up.call(method, params)
        except QrcError:
            await asyncio.sleep(0.1)


@pytest.fixture
async def make_upstream() -> AsyncIterator[UpstreamFactory]:
    started: list[UpstreamPool] = []

    async def factory(
        port: int, *, host: str = PRIMARY, wait_up: bool = True, **kwargs: Any
    ) -> UpstreamPool:
        core_fields = {
            k: kwargs.pop(k)
            for k in ("redundantHost", "usernameFile", "passwordFile", "requestTimeoutSeconds")
            if k in kwargs
        }
        core_fields.setdefault("requestTimeoutSeconds", 2.0)
        core = CoreConfig(host=host, port=port, **core_fields)
        up = UpstreamPool(core, **{**FAST, **kwargs})
        started.append(up)
        await up.start()
        if wait_up:
            await wait_until(lambda: up.up)
        return up

    try:
        yield factory
    finally:
        for up in started:
            await up.stop()
        leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith("qsys-upstream")]
        assert not leftover


def control_get(name: str) -> tuple[str, list[str]]:
    return "Control.Get", [name]


async def test_concurrent_calls_share_connections(
    sim: CoreSimulator, make_upstream: UpstreamFactory
) -> None:
    metrics = GatewayMetrics()
    up = await make_upstream(sim.port, metrics=metrics)
    await wait_until(lambda: len(sim.connections) == 2)
    names = ["MainGain", "MainMute", "LobbyMusicLevel", "LobbyMusicOn", "WelcomeText"]
    sim.faults.latency = 0.05
    results = await asyncio.wait_for(
        asyncio.gather(*(up.forward("Control.Get", [names[i % 5]]) for i in range(300))), 10
    )
    assert [r[0]["Name"] for r in results] == [names[i % 5] for i in range(300)]
    assert len(sim.connections) == 2
    assert up.engine_status is not None
    assert up.engine_status["State"] == "Active"
    assert up.active_host == PRIMARY
    assert up.circuit_state == "closed"
    assert metrics.registry.get_sample_value("qsys_gateway_upstream_up") == 1
    with pytest.raises(QrcError) as err:
        await up.forward("Logon", {"User": "someone", "Password": "x"})
    assert err.value.code == ErrorCode.INVALID_REQUEST
    count = metrics.registry.get_sample_value(
        "qsys_gateway_upstream_request_duration_seconds_count", {"method": "Control.Get"}
    )
    assert count == 300


async def test_calls_that_follow_each_other_share_a_connection_until_one_stalls(
    sim: CoreSimulator, make_upstream: UpstreamFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call goes to the previous call's connection (one write and one read for calls
    close together) while it has at most `COALESCE` more pending than the least busy
    and none pending for `STALL`; past either, to the least busy. (`STALL` is widened
    here: on a loaded machine one loop pass can take longer than its 5 ms.)"""
    monkeypatch.setattr(pool, "STALL", 0.05)
    stall = pool.STALL
    up = await make_upstream(sim.port)
    conns = up._conns
    await wait_until(lambda: len(conns) == 2 and all(c.up for c in conns))
    sim.faults.latency = 1.0
    loop = asyncio.get_running_loop()

    def start(n: int) -> list[asyncio.Task[Any]]:
        return [loop.create_task(up.forward("Control.Get", ["MainGain"])) for _ in range(n)]

    def pending() -> list[int]:
        return sorted(c.pending for c in conns)

    calls = start(8)
    await asyncio.sleep(0)  # their first steps ran (one loop pass)
    assert pending() == [0, 8]
    calls += start(1)  # the next pass: the same connection, still flowing
    await asyncio.sleep(0)
    assert pending() == [0, 9]
    await asyncio.sleep(stall * 4)  # its calls are now pending for longer than STALL
    calls += start(1)
    await asyncio.sleep(0)
    assert pending() == [1, 9]  # to the least busy, not behind the stalled ones
    results = await asyncio.wait_for(asyncio.gather(*calls), 20)
    assert all(r[0]["Name"] == "MainGain" for r in results)
    assert pending() == [0, 0]

    calls = start(2 * COALESCE + 10)  # more than the slack allows: both take some
    await asyncio.sleep(0)
    low, high = pending()
    assert low + high == 2 * COALESCE + 10
    assert high - low <= COALESCE + 1
    results = await asyncio.wait_for(asyncio.gather(*calls), 20)
    assert len(results) == 2 * COALESCE + 10


async def test_core_errors_pass_through(sim: CoreSimulator, make_upstream: UpstreamFactory) -> None:
    up = await make_upstream(sim.port)
    with pytest.raises(QrcError) as err:
        await up.forward("Control.Get", ["NoSuchControl"])
    assert err.value.code == ErrorCode.UNKNOWN_CONTROL
    with pytest.raises(QrcError) as err:
        await up.forward("Component.GetControls", {"Name": "Nope"})
    assert err.value.code == ErrorCode.UNKNOWN_COMPONENT
    state = await up.forward("Control.Set", {"Name": "LobbyMusicLevel", "Value": -12})
    assert (state["Value"], state["String"]) == (-12.0, "-12.0dB")
    assert sim.get_control("LobbyMusicLevel")["Value"] == -12
    assert up.circuit_state == "closed"


async def test_logon_with_credentials(
    qsys_simulator: Any, make_upstream: UpstreamFactory, tmp_path: Path
) -> None:
    sim = await qsys_simulator(username="gateway", password="s3cret-pw")
    (tmp_path / "user").write_text("gateway\n")
    (tmp_path / "pass").write_text("s3cret-pw\n")
    up = await make_upstream(
        sim.port, usernameFile=str(tmp_path / "user"), passwordFile=str(tmp_path / "pass")
    )
    result = await up.forward("Control.Get", ["MainGain"])
    assert result[0]["Name"] == "MainGain"


async def test_refused_logon_is_not_up(
    qsys_simulator: Any,
    make_upstream: UpstreamFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = await qsys_simulator(username="gateway", password="right-pw")
    (tmp_path / "user").write_text("gateway")
    (tmp_path / "pass").write_text("wrong-pw-xyzzy")
    up = await make_upstream(
        sim.port,
        wait_up=False,
        usernameFile=str(tmp_path / "user"),
        passwordFile=str(tmp_path / "pass"),
    )
    await wait_until(lambda: sim.requests >= 4)
    assert not up.up
    with pytest.raises(QrcError) as err:
        await up.forward("Control.Get", ["MainGain"])
    assert err.value.code == ErrorCode.CORE_UNAVAILABLE
    assert getattr(err.value, "retry_after", 0) > 0
    assert "wrong-pw-xyzzy" not in str(err.value)
    assert "refused the gateway's logon" in caplog.text
    assert "wrong-pw-xyzzy" not in caplog.text
    for record in caplog.records:
        assert "wrong-pw-xyzzy" not in repr(record.args)


async def test_keepalive_beats_idle_timeout(
    qsys_simulator: Any, make_upstream: UpstreamFactory
) -> None:
    sim = await qsys_simulator(idle_timeout=1.0)
    metrics = GatewayMetrics()
    up = await make_upstream(sim.port, metrics=metrics, keepalive_seconds=0.3)
    await wait_until(lambda: len(sim.connections) == 2)
    first = set(sim.connections)
    await asyncio.sleep(2.5)
    assert set(sim.connections) == first
    assert up.up
    assert metrics.registry.get_sample_value("qsys_gateway_upstream_reconnects_total") == 0
    assert sim.requests >= 2 * 4  # handshake + several NoOps per connection


async def test_core_killed_mid_call_fails_fast(
    sim: CoreSimulator, make_upstream: UpstreamFactory
) -> None:
    up = await make_upstream(sim.port, requestTimeoutSeconds=10.0)
    sim.faults.latency = 5.0
    loop = asyncio.get_running_loop()
    write = asyncio.create_task(up.forward("Control.Set", {"Name": "LobbyMusicOn", "Value": 0}))
    read = asyncio.create_task(up.forward("Control.Get", ["MainGain"]))
    await asyncio.sleep(0.2)
    start = loop.time()
    await sim.stop()
    for task in (write, read):
        with pytest.raises(QrcError) as err:
            await asyncio.wait_for(task, 3)
        assert err.value.code == ErrorCode.CORE_UNAVAILABLE
    assert loop.time() - start < 2
    await wait_until(lambda: not up.up)
    with pytest.raises(QrcError) as err:
        await up.forward("NoOp", {})
    assert err.value.code == ErrorCode.CORE_UNAVAILABLE


async def test_core_down_at_start(unused_port: int, make_upstream: UpstreamFactory) -> None:
    up = await make_upstream(unused_port, wait_up=False)
    await asyncio.sleep(0.3)
    assert not up.up
    assert up.active_host is None
    assert up.engine_status is None
    with pytest.raises(QrcError) as err:
        await up.forward("StatusGet", 0)
    assert err.value.code == ErrorCode.CORE_UNAVAILABLE
    assert getattr(err.value, "retry_after", -1) > 0


async def test_restart_recreates_groups_and_autopoll(
    sim: CoreSimulator, make_upstream: UpstreamFactory
) -> None:
    metrics = GatewayMetrics()
    up = await make_upstream(sim.port, metrics=metrics)
    pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    session = up.open_session(pushes.put_nowait)
    assert await session.call("ChangeGroup.AddControl", {"Id": "1", "Controls": ["MainGain"]})
    assert await session.call(
        "ChangeGroup.AddComponentControl",
        {"Id": "1", "Component": {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "mute"}]}},
    )
    assert await session.call("ChangeGroup.AutoPoll", {"Id": "1", "Rate": 0.1})
    first = await asyncio.wait_for(pushes.get(), 3)
    assert first["method"] == "ChangeGroup.Poll"
    assert first["params"]["Id"] == "1"
    assert {c["Name"] for c in first["params"]["Changes"]} == {"MainGain", "mute"}
    assert metrics.registry.get_sample_value("qsys_gateway_change_groups") == 1

    await sim.restart(downtime=0.3)
    await wait_until(lambda: up.up and sim.engine.change_group_count == 1, 8)
    sim.set_control("MainGain", -7)

    async def wait_for_value() -> dict[str, Any]:
        while True:
            msg = await pushes.get()
            for change in msg["params"]["Changes"]:
                if change["Name"] == "MainGain" and change["Value"] == -7:
                    return msg

    msg = await asyncio.wait_for(wait_for_value(), 5)
    assert msg["params"]["Id"] == "1"
    poll = await session.call("ChangeGroup.Poll", {"Id": "1"})
    assert poll["Id"] == "1"
    reconnects = metrics.registry.get_sample_value("qsys_gateway_upstream_reconnects_total")
    assert reconnects is not None
    assert reconnects >= 1
    await session.close()
    assert sim.engine.change_group_count == 0


async def test_sessions_with_the_same_group_id_do_not_collide(
    sim: CoreSimulator, make_upstream: UpstreamFactory
) -> None:
    up = await make_upstream(sim.port)
    a = up.open_session(lambda _m: None)
    b = up.open_session(lambda _m: None)
    await a.call("ChangeGroup.AddControl", {"Id": "1", "Controls": ["MainGain"]})
    await b.call("ChangeGroup.AddControl", {"Id": "1", "Controls": ["WelcomeText"]})
    await b.call("ChangeGroup.AddControl", {"Id": 7, "Controls": ["LobbyMusicOn"]})
    # client groups live in the gateway; the Core holds one shared hub group
    assert up.change_group_count == 3
    assert sim.engine.change_group_count == 1
    pa = await a.call("ChangeGroup.Poll", {"Id": "1"})
    pb = await b.call("ChangeGroup.Poll", {"Id": "1"})
    assert pa["Id"] == "1"
    assert [c["Name"] for c in pa["Changes"]] == ["MainGain"]
    assert pb["Id"] == "1"
    assert [c["Name"] for c in pb["Changes"]] == ["WelcomeText"]
    p7 = await b.call("ChangeGroup.Poll", {"Id": 7})
    assert p7["Id"] == 7
    with pytest.raises(QrcError) as err:
        await a.call("ChangeGroup.Poll", {"Id": 7})
    assert err.value.code == ErrorCode.UNKNOWN_CHANGE_GROUP
    assert await a.call("ChangeGroup.Destroy", {"Id": "1"}) is True
    assert up.change_group_count == 2
    assert sim.engine.change_group_count == 1
    assert (await b.call("ChangeGroup.Poll", {"Id": "1"}))["Id"] == "1"
    await b.close()
    assert sim.engine.change_group_count == 0
    assert up.change_group_count == 0
    await a.close()


async def test_change_groups_per_session_are_bounded(
    sim: CoreSimulator, make_upstream: UpstreamFactory
) -> None:
    up = await make_upstream(sim.port, max_groups_per_session=2)
    s = up.open_session(lambda _m: None)
    for gid in ("a", "b"):
        await s.call("ChangeGroup.AddControl", {"Id": gid, "Controls": ["MainGain"]})
    with pytest.raises(QrcError) as err:
        await s.call("ChangeGroup.AddControl", {"Id": "c", "Controls": ["MainGain"]})
    assert err.value.code == ErrorCode.CHANGE_GROUPS_EXHAUSTED
    assert "per session" in err.value.message
    # failed adds do not leave a group behind
    with pytest.raises(QrcError) as err:
        await s.call("ChangeGroup.Destroy", {"Id": "c"})
    assert err.value.code == ErrorCode.UNKNOWN_CHANGE_GROUP
    assert await s.call("ChangeGroup.Destroy", {"Id": "b"}) is True
    with pytest.raises(QrcError) as err:
        await s.call("ChangeGroup.AddControl", {"Id": "d", "Controls": ["NoSuchControl"]})
    assert err.value.code == ErrorCode.UNKNOWN_CONTROL
    with pytest.raises(QrcError) as err:
        await s.call("ChangeGroup.Poll", {"Id": "d"})
    assert err.value.code == ErrorCode.UNKNOWN_CHANGE_GROUP
    # a cleared group stays the client's, answered without the Core
    assert await s.call("ChangeGroup.Clear", {"Id": "a"}) is True
    assert await s.call("ChangeGroup.Poll", {"Id": "a"}) == {"Id": "a", "Changes": []}
    with pytest.raises(QrcError) as err:
        await s.call("ChangeGroup.AddControl", {"Id": "x"})
    assert err.value.code == ErrorCode.INVALID_PARAMS
    await s.close()
    assert sim.engine.change_group_count == 0


def _circuit_state(up: UpstreamPool) -> CircuitState:
    """Read the property afresh: mypy would keep an asserted value narrowed across awaits."""
    return up.circuit_state


async def test_hung_core_times_out_then_circuit_opens_and_recovers(
    sim: CoreSimulator, make_upstream: UpstreamFactory
) -> None:
    metrics = GatewayMetrics()
    up = await make_upstream(
        sim.port,
        metrics=metrics,
        requestTimeoutSeconds=0.3,
        circuit_failure_threshold=3,
        circuit_reset_seconds=1.0,
    )
    sim.faults.swallow_replies = -1
    for _ in range(3):
        with pytest.raises(QrcError) as err:
            await up.forward("Control.Get", ["MainGain"])
        assert err.value.code == ErrorCode.CORE_TIMEOUT
    assert _circuit_state(up) == "open"
    assert metrics.registry.get_sample_value("qsys_gateway_circuit_state") == 2
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(QrcError) as err:
        await up.forward("Control.Get", ["MainGain"])
    assert loop.time() - start < 0.1
    assert err.value.code == ErrorCode.CORE_UNAVAILABLE
    assert 0 < getattr(err.value, "retry_after", 0) <= 1.0
    sim.faults.clear()
    result = await asyncio.wait_for(call_until_ok(up, "Control.Get", ["MainGain"]), 8)
    assert result[0]["Name"] == "MainGain"
    assert _circuit_state(up) == "closed"
    assert metrics.registry.get_sample_value("qsys_gateway_circuit_state") == 0


async def test_a_core_that_stops_reading_is_left_and_reconnected(
    sim: CoreSimulator, make_upstream: UpstreamFactory
) -> None:
    """A hung Core whose socket takes nothing more (its TCP window closed) while calls are
    still unsent: the keep-alive times out and the connection is replaced. Closing the old
    socket drops what it could not send; it used to wait for the Core for ever."""
    metrics = GatewayMetrics()
    up = await make_upstream(
        sim.port,
        connections=1,
        metrics=metrics,
        keepalive_seconds=0.5,
        requestTimeoutSeconds=0.5,
        circuit_failure_threshold=10_000,
    )
    await wait_until(lambda: len(sim.connections) == 1)
    (deaf,) = sim.connections
    sim.stop_reading()
    (conn,) = up._conns
    client = conn._client
    assert client is not None
    text = "x" * 100_000
    calls = [
        asyncio.create_task(up.forward("Control.Set", {"Name": "WelcomeText", "Value": text}))
        for _ in range(128)
    ]
    try:
        await asyncio.sleep(0.1)
        # the precondition: the kernel's buffers are full, the rest waits in the transport
        assert client.write_buffer_size > 0
        await wait_until(lambda: up.up and any(c is not deaf for c in sim.connections), timeout=8)
        assert metrics.registry.get_sample_value("qsys_gateway_upstream_reconnects_total") == 1
        assert client.closed.is_set()
        assert await up.forward("Control.Get", ["MainGain"])
    finally:
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, QrcError) for r in results), results[:3]


async def test_failover_when_primary_unreachable(
    qsys_simulator: Any, make_upstream: UpstreamFactory
) -> None:
    backup = await qsys_simulator(host=SECONDARY)
    up = await make_upstream(backup.port, redundantHost=SECONDARY)
    assert up.active_host == SECONDARY
    assert (await up.forward("Control.Get", ["MainGain"]))[0]["Name"] == "MainGain"


async def test_failover_away_from_standby_unit(
    qsys_simulator: Any, make_upstream: UpstreamFactory
) -> None:
    primary = await qsys_simulator(host=PRIMARY)
    backup = await qsys_simulator(host=SECONDARY, port=primary.port)
    primary.set_state("Standby")
    up = await make_upstream(primary.port, redundantHost=SECONDARY)
    assert up.active_host == SECONDARY
    session = up.open_session(lambda _m: None)
    await session.call("ChangeGroup.AddControl", {"Id": "g", "Controls": ["MainGain"]})
    assert backup.engine.change_group_count == 1

    # the pair swaps roles: the gateway follows the pushed EngineStatus
    primary.set_state("Active")
    backup.set_state("Standby")
    await wait_until(lambda: up.active_host == PRIMARY and primary.engine.change_group_count == 1)
    assert len(backup.connections) == 0
    status = await call_until_ok(up, "StatusGet", 0)
    assert status["State"] == "Active"
    assert up.engine_status is not None
    assert up.engine_status["State"] == "Active"
    poll = await session.call("ChangeGroup.Poll", {"Id": "g"})
    assert poll["Id"] == "g"
    await session.close()


async def test_a_pushed_engine_status_keeps_platform_and_status(
    make_upstream: UpstreamFactory,
) -> None:
    """A Core's EngineStatus has no Platform/Status; the gateway keeps StatusGet's."""
    async with CoreSimulator() as sim:
        up = await make_upstream(sim.port)
        sim.set_state("Idle")
        await wait_until(lambda: (up.engine_status or {}).get("State") == "Idle")
        status = up.engine_status
        assert status is not None
        assert status["Platform"] == "Core 110f"
        assert status["Status"] == {"Code": 0, "String": "OK"}


async def test_a_call_sent_without_a_task_waits_for_its_share_within_its_budget(
    sim: CoreSimulator, make_upstream: UpstreamFactory
) -> None:
    """`UpstreamPool.send`: the outcome goes to `done` as the Core answers; over the
    subject's share the call waits, in order, and fails -32050 when no slot comes within
    its budget; a cancelled call, sent or waiting, gives back what it held."""
    metrics = GatewayMetrics()
    up = await make_upstream(
        sim.port, requestTimeoutSeconds=0.3, max_pending_per_subject=1, metrics=metrics
    )
    ended: dict[str, tuple[Any, BaseException | None]] = {}

    def done(name: str) -> Callable[[Any, BaseException | None], None]:
        def end(result: Any, error: BaseException | None) -> None:
            assert name not in ended, "ended twice"
            ended[name] = (result, error)

        return end

    first = up.send(*control_get("MainGain"), "s", done("first"))
    assert first is not None
    await wait_until(lambda: "first" in ended)
    assert ended["first"][1] is None
    assert ended["first"][0][0]["Name"] == "MainGain"
    assert up.shares.pending("s") == 0

    assert up.shares.try_acquire("s")  # a holder that keeps the share past the budget
    waiting = up.send(*control_get("MainGain"), "s", done("waiting"))
    assert waiting is not None
    assert up.shares.waiting("s") == 1
    await wait_until(lambda: "waiting" in ended)
    error = ended["waiting"][1]
    assert isinstance(error, QrcError)
    assert error.code == ErrorCode.CORE_UNAVAILABLE
    assert up.shares.waiting("s") == 0
    assert metrics.registry.get_sample_value("qsys_gateway_subject_share_full_total") == 1

    cancelled = up.send(*control_get("MainGain"), "s", done("cancelled"))
    assert cancelled is not None
    cancelled.cancel()
    assert up.shares.waiting("s") == 0
    up.shares.release("s")
    assert up.shares.pending("s") == 0

    sim.faults.latency = 0.2
    sent = up.send(*control_get("MainGain"), "s", done("sent"))
    assert sent is not None
    assert sum(c.pending for c in up._conns) == 1
    sent.cancel()
    assert sum(c.pending for c in up._conns) == 0
    assert up.shares.pending("s") == 0
    await asyncio.sleep(0.3)  # its answer comes and reaches no one
    assert "sent" not in ended
    assert "cancelled" not in ended
