"""`UpstreamPool`: a small pool of connections to the Core shared by every client session."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Coroutine
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
from .session import UpstreamSession
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
        if not owner or self.shares.try_acquire(owner):
            return self._forward(method, params, budget, conn, owner)
        return self._forward_queued(method, params, budget, conn, owner)

    async def _forward_queued(
        self, method: str, params: Any, budget: float, conn: UpstreamConnection | None, owner: str
    ) -> Any:
        """`owner`'s share is full: wait for room within the budget, then forward."""
        loop = asyncio.get_running_loop()
        queued = loop.time()
        if not await self.shares.acquire(owner, budget):
            if self._metrics is not None:
                self._metrics.subject_share_full.inc()
            raise CoreUnavailable("too many calls of this client pending on the Core", 1.0)
        left = max(0.001, budget - (loop.time() - queued))
        return await self._forward(method, params, left, conn, owner)

    async def _forward(
        self,
        method: str,
        params: Any,
        budget: float,
        conn: UpstreamConnection | None,
        owner: str = "",
    ) -> Any:
        """`owner`: the subject whose share this call holds (given back here), or ""."""
        try:
            loop = self._loop or asyncio.get_running_loop()
            deadline = loop.time() + budget
            retried = False
            while True:
                probe = self._circuit.acquire()
                target = conn if conn is not None else self.pick()
                if target is None or not target.up:
                    self._circuit.release(probe)
                    raise CoreUnavailable("no connection to the Core", self._reconnect_eta())
                start = loop.time()
                try:
                    resp = await target.request(method, params, max(0.001, deadline - start))
                except Busy:
                    self._circuit.release(probe)
                    raise CoreUnavailable("too many pending calls", 1.0) from None
                except NotConnected:
                    self._circuit.release(probe)
                    raise CoreUnavailable(
                        "no connection to the Core", self._reconnect_eta()
                    ) from None
                except TimeoutError:
                    self._circuit.failure(probe)
                    raise CoreTimeout(budget) from None
                except ConnectionClosed:
                    self._circuit.failure(probe)
                    if (
                        conn is None
                        and not retried
                        and traits_of(method).retryable
                        and loop.time() < deadline
                        and any(c.up and c is not target for c in self._conns)
                    ):
                        retried = True
                        if self._held is target:
                            self._held = None
                        continue
                    raise CoreUnavailable(
                        "connection to the Core lost", self._reconnect_eta()
                    ) from None
                self._circuit.success(probe)
                if self._metrics is not None:
                    self._metrics.upstream_duration.labels(method_label(method)).observe(
                        loop.time() - start
                    )
                return self._result(target, resp)
        finally:
            if owner:
                self.shares.release(owner)

    def _result(self, conn: UpstreamConnection, resp: jsonrpc.Response) -> Any:
        if resp.error is None:
            return resp.result
        code = resp.error.get("code")
        if code == ErrorCode.STANDBY:
            if conn.host is not None:
                self.host_standby(conn.host)
            raise CoreUnavailable("the Core unit is on standby", 1.0)
        raise QrcError.from_error_object(resp.error)

    def pick(self) -> UpstreamConnection | None:
        """The up connection with fewest pending calls, ties round-robin; but the
        connection of the previous call while it has at most `COALESCE` more pending and
        none of them pending for `STALL` (a slow call): calls that follow each other go
        out in one write per loop pass and come back in one read. Spread over the
        connections, a client's pipelined calls cost a write and a read per connection
        per pass and their replies split into more, smaller writes."""
        conns = self._conns
        n = len(conns)
        offset = next(self._rr) % n if n else 0
        best: UpstreamConnection | None = None
        for i in range(n):
            c = conns[(offset + i) % n]
            if c.up and (best is None or c.pending < best.pending):
                best = c
        held = self._held
        if (
            best is not None
            and held is not None
            and held is not best
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
