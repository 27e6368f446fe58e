"""`UpstreamPool`: a small pool of connections to the Core shared by every client session."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from qsys_protocol.config import CoreConfig
from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.client import ConnectionClosed
from qsys_protocol.qrc.errors import ErrorCode, QrcError
from qsys_protocol.qrc.methods import traits_of

from ..metrics import GatewayMetrics, method_label
from .circuit import STATE_VALUES, CircuitBreaker, CircuitState
from .connection import Busy, ConnectionSettings, NotConnected, UpstreamConnection
from .controltypes import ControlTypes
from .errors import CoreTimeout, CoreUnavailable
from .failover import HostSelector
from .groups import GroupLedger, ReadCheck
from .hub import CORE_GROUP_PREFIX, POLL_INTERVAL, SubscriptionHub
from .session import Done, UpstreamSession
from .shares import SubjectShares

log = logging.getLogger("qsys_gateway.upstream")

COALESCE = 32
"""`pick`: how many more pending calls than the least busy connection the previous
call's connection may have and still take the next call."""
STALL = 0.005
"""`pick`: a connection with a call pending this long (seconds) takes no more calls
ahead of the least busy one."""


class UpstreamPool:
    def __init__(
        self,
        core: CoreConfig,
        *,
        connections: int = 2,
        metrics: GatewayMetrics | None = None,
        on_engine_status: Callable[[dict[str, Any]], None] | None = None,
        keepalive_seconds: float | None = None,
        connect_timeout: float | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        circuit_failure_threshold: int = 5,
        circuit_reset_seconds: float = 10.0,
        max_pending_per_connection: int = 256,
        max_pending_per_subject: int = 128,
        max_groups_per_session: int = 64,
        max_change_groups: int = 10_000,
        hub_poll_interval: float = POLL_INTERVAL,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self._core = core
        self._metrics = metrics
        self._on_engine_status = on_engine_status
        self._hosts = HostSelector(core.host, core.redundantHost)
        self._circuit = CircuitBreaker(
            circuit_failure_threshold, circuit_reset_seconds, on_change=self._circuit_changed
        )
        user, password = core.credentials()
        self._settings = ConnectionSettings(
            port=core.port,
            username=user,
            password=password,
            keepalive=keepalive_seconds or core.keepAliveSeconds,
            request_timeout=core.requestTimeoutSeconds,
            connect_timeout=connect_timeout or min(5.0, core.requestTimeoutSeconds),
            max_pending=max_pending_per_connection,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
        )
        self._n_connections = connections
        self.shares = SubjectShares(max_pending_per_subject)
        """Calls one subject may have pending on the Core at once (the rest wait)."""
        self._conns: list[UpstreamConnection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        """Set by `start` (in Python 3.11 every `asyncio.get_running_loop()` is a `getpid`
        syscall)."""
        self._rr = itertools.count()
        self._held: UpstreamConnection | None = None
        """The connection `pick` gave the previous call."""
        self._engine_status: dict[str, Any] | None = None
        self.groups = GroupLedger(
            max_groups_per_session, max_change_groups, on_change=self._groups_changed
        )
        self._session_ids = itertools.count(1)
        self._sessions: set[UpstreamSession] = set()
        self.hub = SubscriptionHub(self, poll_interval=hub_poll_interval)
        self.control_types = ControlTypes(self.forward)
        self._was_up = False
        self._up_event = asyncio.Event()
        self._up_listeners: list[Callable[[bool], None]] = []

    # ---- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        if self._conns:
            return
        self._loop = asyncio.get_running_loop()
        self._conns = [
            UpstreamConnection(i, self, self._settings) for i in range(self._n_connections)
        ]
        for conn in self._conns:
            conn.start()
        self.hub.start()
        self._update_up()

    async def stop(self) -> None:
        for session in list(self._sessions):
            session.halt()
        await self.hub.stop()
        conns, self._conns = self._conns, []
        await asyncio.gather(*(c.stop() for c in conns))
        self._update_up()

    # ---- state ------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return any(c.up for c in self._conns)

    def add_up_listener(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(up)` whenever the Core becomes reachable or is lost."""
        self._up_listeners.append(listener)

    async def wait_up(self, timeout: float) -> bool:
        """Whether the Core is reachable, waiting up to `timeout` seconds for it."""
        if not self.up:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._up_event.wait()
        return self.up

    @property
    def engine_status(self) -> dict[str, Any] | None:
        return self._engine_status

    @property
    def circuit_state(self) -> CircuitState:
        return self._circuit.state

    @property
    def active_host(self) -> str | None:
        return next((c.host for c in self._conns if c.up), None)

    @property
    def request_timeout(self) -> float:
        return self._settings.request_timeout

    @property
    def change_group_count(self) -> int:
        """Client change groups held by the gateway (the Core holds `hub.core_group_count`)."""
        return len(self.groups)

    def open_session(
        self,
        push: Callable[[dict[str, Any]], None],
        can_read: ReadCheck | None = None,
        owner: str = "",
    ) -> UpstreamSession:
        """`owner` (the subject) is what the per-subject change-group quota counts by."""
        session = UpstreamSession(self, next(self._session_ids), push, can_read, owner)
        self._sessions.add(session)
        if self._metrics is not None:
            self._metrics.upstream_sessions.set(len(self._sessions))
        return session

    # ---- calls ------------------------------------------------------------------

    def forward(
        self,
        method: str,
        params: Any,
        *,
        timeout: float | None = None,
        conn: UpstreamConnection | None = None,
        owner: str = "",
    ) -> Coroutine[Any, Any, Any]:
        """Send one call (on `conn` when pinned, else the least busy connection); a
        client's call names its subject as `owner`, whose share of pending calls it takes
        (given back when the awaited call ends). Await it at once."""
        if method == "Logon":
            # the shared sockets are logged on with the gateway's credentials only
            raise QrcError(ErrorCode.INVALID_REQUEST, "Invalid request: Logon is not forwarded")
        budget = self._core.requestTimeoutSeconds if timeout is None else timeout
        return self._forward(method, params, budget, conn, owner)

    def send(self, method: str, params: Any, owner: str, done: Done) -> Forwarded | None:
        """`forward` for a client's call, with no task waiting for it: its outcome goes
        to `done` as the Core's response is read (or as its wait for `owner`'s share
        ends). None when it cannot go (Logon, no connection can take it, the circuit
        open): nothing was taken, and `forward` says why."""
        if method == "Logon":
            return None
        call = Forwarded(self, method, params, self._core.requestTimeoutSeconds, None, owner, done)
        try:
            self._start(call)
        except QrcError:
            return None
        return call

    async def _forward(
        self,
        method: str,
        params: Any,
        budget: float,
        conn: UpstreamConnection | None,
        owner: str = "",
    ) -> Any:
        """`owner`: the subject whose share this call takes (given back as it ends), or ""."""
        fut: asyncio.Future[Any] = (self._loop or asyncio.get_running_loop()).create_future()
        call = Forwarded(self, method, params, budget, conn, owner, partial(_resolve, fut))
        self._start(call)
        try:
            return await fut
        except asyncio.CancelledError:
            call.cancel()
            raise

    def _start(self, call: Forwarded) -> None:
        """Send `call` now, or queue it for its owner's share (it fails when no slot
        comes within its budget); raises `CoreUnavailable` (nothing held) when it cannot
        go now."""
        if call.owner and not self.shares.try_acquire(call.owner):
            call.queue()
            return
        try:
            self._send(call, None)
        except BaseException:
            call.release_share()
            raise

    def _send(self, call: Forwarded, avoid: UpstreamConnection | None) -> None:
        """Send `call` on its pinned connection or the one `pick` gives (not `avoid`, the
        connection it was lost on); raises `CoreUnavailable` when it cannot go now."""
        probe = self._circuit.acquire()
        target = call.conn if call.conn is not None else self.pick(avoid)
        if target is None or not target.up:
            self._circuit.release(probe)
            raise CoreUnavailable("no connection to the Core", self._reconnect_eta())
        loop = self._loop or asyncio.get_running_loop()
        start = loop.time()
        try:
            seq, rid = target.send_call(
                call.method, call.params, max(0.001, call.deadline - start), call
            )
        except Busy:
            self._circuit.release(probe)
            raise CoreUnavailable("too many pending calls", 1.0) from None
        except (NotConnected, ConnectionClosed):
            self._circuit.release(probe)
            raise CoreUnavailable("no connection to the Core", self._reconnect_eta()) from None
        call._target, call._seq, call._rid, call.probe, call.started = (
            target,
            seq,
            rid,
            probe,
            start,
        )

    def _ended(self, call: Forwarded, target: UpstreamConnection, resp: jsonrpc.Response) -> Any:
        """A response to `call`: the circuit and the upstream duration, then its result
        (or the `QrcError` it carries)."""
        self._circuit.success(call.probe)
        if self._metrics is not None:
            loop = self._loop or asyncio.get_running_loop()
            self._metrics.upstream_duration.labels(method_label(call.method)).observe(
                loop.time() - call.started
            )
        return resp.result if resp.error is None else self._result(target, resp)

    def _failed(self, call: Forwarded, target: UpstreamConnection, exc: BaseException) -> bool:
        """No response to `call` (lost, timed out): True when it went out again on
        another connection (a retryable call, once, within its budget); else raises the
        error the client gets."""
        self._circuit.failure(call.probe)
        if isinstance(exc, TimeoutError):
            raise CoreTimeout(call.budget) from None
        if not isinstance(exc, ConnectionClosed):
            raise exc
        loop = self._loop or asyncio.get_running_loop()
        if (
            call.conn is None
            and not call.retried
            and traits_of(call.method).retryable
            and loop.time() < call.deadline
            and any(c.up and c is not target for c in self._conns)
        ):
            call.retried = True
            if self._held is target:
                self._held = None
            self._send(call, target)
            return True
        raise CoreUnavailable("connection to the Core lost", self._reconnect_eta()) from None

    def _result(self, conn: UpstreamConnection, resp: jsonrpc.Response) -> Any:
        if resp.error is None:
            return resp.result
        code = resp.error.get("code")
        if code == ErrorCode.STANDBY:
            if conn.host is not None:
                self.host_standby(conn.host)
            raise CoreUnavailable("the Core unit is on standby", 1.0)
        raise QrcError.from_error_object(resp.error)

    def pick(self, avoid: UpstreamConnection | None = None) -> UpstreamConnection | None:
        """The up connection with fewest pending calls, ties round-robin; but the
        connection of the previous call while it has at most `COALESCE` more pending and
        none of them pending for `STALL` (a slow call): calls that follow each other go
        out in one write per loop pass and come back in one read. Spread over the
        connections, a client's pipelined calls cost a write and a read per connection
        per pass and their replies split into more, smaller writes. Never `avoid`."""
        conns = self._conns
        n = len(conns)
        offset = next(self._rr) % n if n else 0
        best: UpstreamConnection | None = None
        for i in range(n):
            c = conns[(offset + i) % n]
            if c.up and c is not avoid and (best is None or c.pending < best.pending):
                best = c
        held = self._held
        if (
            best is not None
            and held is not None
            and held is not best
            and held is not avoid
            and held.up
            and held.pending <= best.pending + COALESCE
            and held.flowing(STALL)
        ):
            return held
        self._held = best
        return best

    def _reconnect_eta(self) -> float:
        if self._circuit.state == "open":
            return self._circuit.retry_after()
        now = asyncio.get_running_loop().time()
        etas = [c.next_attempt_at - now for c in self._conns]
        return round(max(0.5, min(etas, default=1.0)), 3)

    # ---- connection events (ConnectionOwner) ------------------------------------

    def choose_host(self) -> str:
        return self._hosts.active

    def host_failed(self, host: str) -> None:
        if self._hosts.fail(host, "is unreachable"):
            self._leave(host)

    def host_standby(self, host: str) -> None:
        if self._hosts.fail(host, "is on standby"):
            self._leave(host)

    def _leave(self, host: str) -> None:
        for c in self._conns:
            if c.up and c.host == host:
                c.drop()

    def connection_up(self, conn: UpstreamConnection, status: dict[str, Any]) -> None:
        if conn.connects > 1 and self._metrics is not None:
            self._metrics.upstream_reconnects.inc()
        self._set_status(status)
        self._update_up()
        self.hub.connection_changed()

    def connection_down(self, conn: UpstreamConnection) -> None:
        self._update_up()
        self.hub.connection_changed()

    def notification(self, conn: UpstreamConnection, msg: jsonrpc.Request) -> None:
        params = msg.params
        if msg.method == "ChangeGroup.Poll" and isinstance(params, dict):
            # the hub polls explicitly; an AutoPoll push of its groups is still good news
            gid = params.get("Id")
            changes = params.get("Changes")
            if (
                conn is self.hub.conn
                and isinstance(gid, str)
                and gid.startswith(CORE_GROUP_PREFIX)
                and isinstance(changes, list)
            ):
                self.hub.apply(changes)
        elif msg.method == "EngineStatus" and isinstance(params, dict):
            if params.get("State") == "Standby" and conn.up and conn.host is not None:
                self.host_standby(conn.host)
            if conn.host == self._hosts.active:
                # a Core's EngineStatus carries no Platform/Status: keep StatusGet's
                self._set_status({**(self._engine_status or {}), **params})

    def _set_status(self, status: dict[str, Any]) -> None:
        if status == self._engine_status:
            return
        previous = self._engine_status or {}
        if any(previous.get(k) != status.get(k) for k in ("DesignName", "DesignCode")):
            self.control_types.clear()
        self._engine_status = status
        if self._on_engine_status is not None:
            try:
                self._on_engine_status(status)
            except Exception:
                log.exception("engine status callback failed")

    def _update_up(self) -> None:
        up = self.up
        if self._metrics is not None:
            self._metrics.upstream_up.set(1 if up else 0)
        if up != self._was_up:
            self._was_up = up
            log.info("upstream %s", "up" if up else "down")
            if up:
                self._up_event.set()
            else:
                self._up_event.clear()
            for listener in list(self._up_listeners):
                try:
                    listener(up)
                except Exception:
                    log.exception("upstream state listener failed")

    def _circuit_changed(self, state: CircuitState) -> None:
        log.warning("circuit to the core is %s", state)
        if self._metrics is not None:
            self._metrics.circuit_state.set(STATE_VALUES[state])

    # ---- change groups ----------------------------------------------------------

    def session_closed(self, session: UpstreamSession) -> None:
        self._sessions.discard(session)
        if self._metrics is not None:
            self._metrics.upstream_sessions.set(len(self._sessions))

    def _groups_changed(self, count: int) -> None:
        if self._metrics is not None:
            self._metrics.change_groups.set(count)

    def hub_changed(self, core_groups: int, polls: int) -> None:
        """The hub's Core groups changed or it polled them (`polls` Core polls)."""
        if self._metrics is not None:
            self._metrics.core_change_groups.set(core_groups)
            if polls:
                self._metrics.core_polls.inc(polls)


def _resolve(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if not fut.done():
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)


class Forwarded:
    """One call on its way to the Core. It is the upstream client's waiter for the
    response (`ReplyWaiter`), so the call is finished where the response is read, with
    no task or coroutine waiting: its connection's count, the circuit, the upstream
    duration, a lost call sent again, the subject's share given back, then `done`.
    `cancel` ends it unanswered (the client went away)."""

    __slots__ = (
        "_done",
        "_pool",
        "_rid",
        "_seq",
        "_target",
        "_timer",
        "budget",
        "conn",
        "deadline",
        "ended",
        "method",
        "owner",
        "params",
        "probe",
        "retried",
        "started",
    )

    def __init__(
        self,
        pool: UpstreamPool,
        method: str,
        params: Any,
        budget: float,
        conn: UpstreamConnection | None,
        owner: str,
        done: Done,
    ) -> None:
        self._pool = pool
        self.method = method
        self.params = params
        self.budget = budget
        self.deadline = (pool._loop or asyncio.get_running_loop()).time() + budget
        self.conn = conn
        self.owner = owner
        self._done = done
        self.ended = False
        self.retried = False
        self.probe = False
        self.started = 0.0
        self._target: UpstreamConnection | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._seq = self._rid = 0

    def done(self) -> bool:
        return self.ended

    def set_result(self, result: jsonrpc.Response, /) -> None:
        target = self._settle()
        error: QrcError | None = None
        try:
            value = self._pool._ended(self, target, result)
        except QrcError as exc:
            value, error = None, exc
        self._end(value, error)

    def set_exception(self, exception: BaseException, /) -> None:
        target = self._settle()
        try:
            if self._pool._failed(self, target, exception):
                return
        except BaseException as exc:  # handed to `done`, as a future would hold it
            self._end(None, exc)

    def queue(self) -> None:
        """Wait for a slot of `owner`'s share, until the call's deadline."""
        pool = self._pool
        loop = pool._loop or asyncio.get_running_loop()
        self._timer = loop.call_at(self.deadline, self._unqueued)
        pool.shares.wait(self.owner, self._granted)

    def _granted(self) -> bool:
        if self.ended:
            return False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            self._pool._send(self, None)
        except QrcError as exc:
            self._end(None, exc)
        return True

    def _unqueued(self) -> None:
        """No slot of the share came within the call's budget."""
        self._timer = None
        if self.ended:
            return
        self.ended = True
        pool = self._pool
        pool.shares.forget(self.owner, self._granted)
        if pool._metrics is not None:
            pool._metrics.subject_share_full.inc()
        self._done(None, CoreUnavailable("too many calls of this client pending on the Core", 1.0))

    def cancel(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self._target is None:  # still waiting for a slot of the share
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._pool.shares.forget(self.owner, self._granted)
            return
        target = self._settle()
        target.forget(self._rid)
        self._pool._circuit.release(self.probe)
        self.release_share()

    def release_share(self) -> None:
        if self.owner:
            self._pool.shares.release(self.owner)

    def _settle(self) -> UpstreamConnection:
        target = self._target
        assert target is not None, "sent first"
        target.settled(self._seq)
        return target

    def _end(self, result: Any, error: BaseException | None) -> None:
        self.ended = True
        self.release_share()
        self._done(result, error)
