"""One supervised, logged-on, kept-alive QRC socket to the Core."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import SecretStr

from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.client import ConnectionClosed, QrcClient, ReplyWaiter
from qsys_protocol.qrc.errors import ErrorCode, QrcError

from .backoff import Backoff

log = logging.getLogger("qsys_gateway.upstream")


class NotConnected(Exception):
    """The connection is not up; the call was not sent."""


class Busy(Exception):
    """The connection already has its maximum of pending calls; the call was not sent."""


class StandbyUnit(Exception):
    """The unit reports State "Standby" (the inactive half of a redundant pair)."""


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    port: int
    username: str | None
    password: SecretStr | None
    keepalive: float
    request_timeout: float
    connect_timeout: float
    max_pending: int
    backoff_base: float
    backoff_cap: float


class ConnectionOwner(Protocol):
    """What a connection asks of the pool: where to go, and whom to tell."""

    def choose_host(self) -> str: ...
    def host_failed(self, host: str) -> None: ...
    def host_standby(self, host: str) -> None: ...
    def connection_up(self, conn: UpstreamConnection, status: dict[str, Any]) -> None: ...
    def connection_down(self, conn: UpstreamConnection) -> None: ...
    def notification(self, conn: UpstreamConnection, msg: jsonrpc.Request) -> None: ...


class UpstreamConnection:
    """Connects, logs on, checks the unit is not on standby, keeps the socket alive with
    NoOp, and reconnects with back-off whenever any of that fails."""

    def __init__(self, index: int, owner: ConnectionOwner, settings: ConnectionSettings) -> None:
        self.index = index
        self.host: str | None = None
        self.up = False
        self.pending = 0
        self.connects = 0
        self.next_attempt_at = 0.0
        self._owner = owner
        self._s = settings
        self._backoff = Backoff(settings.backoff_base, settings.backoff_cap)
        self._client: QrcClient | None = None
        self._loop = asyncio.get_running_loop()
        self._last_sent = self._loop.time()
        self._sent: dict[int, float] = {}
        """When each pending call was sent, oldest first (by a counter of calls)."""
        self._sends = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        if self._task is None:
            self._task = self._loop.create_task(self._run(), name=f"qsys-upstream-{self.index}")

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        # Python 3.11's wait_for can swallow a cancellation that races with its inner
        # future finishing, so cancel until the task is really gone.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        if task is not None and not task.cancelled():
            with contextlib.suppress(Exception):
                task.result()
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def drop(self) -> None:
        """Close the socket (the supervisor reconnects); pending calls fail at once."""
        client = self._client
        if client is not None:
            client.drop()

    async def request(
        self, method: str, params: Any, timeout: float, *, reserve: int = 0
    ) -> jsonrpc.Response:
        """`reserve`: pending slots beyond `max_pending` this caller may use (the hub's)."""
        client = self._sendable(reserve)
        seq = self._sending()
        try:
            return await client.request(method, params, timeout=timeout)
        finally:
            self.settled(seq)

    def send_call(
        self, method: str, params: Any, timeout: float, waiter: ReplyWaiter
    ) -> tuple[int, int]:
        """`request` without waiting: the response (or its error) goes to `waiter`, which
        calls `settled(seq)` as the call ends, whichever way. Returns (seq, the call's id)."""
        client = self._sendable(0)
        rid = client.send_call(method, params, waiter, timeout)
        return self._sending(), rid

    def forget(self, rid: int) -> bool:
        """Stop waiting for a call `send_call` sent (False: it had ended already)."""
        client = self._client
        return client is not None and client.forget(rid)

    def _sendable(self, reserve: int) -> QrcClient:
        client = self._client
        if not self.up or client is None or client.closed.is_set():
            raise NotConnected
        if self.pending >= self._s.max_pending + reserve:
            raise Busy
        return client

    def _sending(self) -> int:
        self.pending += 1
        self._last_sent = now = self._loop.time()
        seq = self._sends = self._sends + 1
        self._sent[seq] = now
        return seq

    def settled(self, seq: int) -> None:
        """A call sent as `seq` ended."""
        self.pending -= 1
        del self._sent[seq]

    def flowing(self, stall: float) -> bool:
        """Room for another call, and none pending for `stall` seconds or longer (a slow
        call would hold the calls sent after it)."""
        if self.pending >= self._s.max_pending:
            return False
        sent = self._sent
        return not sent or self._loop.time() - next(iter(sent.values())) < stall

    # ---- supervisor -----------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            host = self._owner.choose_host()
            client = await self._connect(host)
            if client is not None:
                self._client = client
                try:
                    await self._serve(client, host)
                finally:
                    was_up, self.up = self.up, False
                    self._client = None
                    await client.close()
                    if was_up:
                        self._owner.connection_down(self)
            delay = self._backoff.next_delay()
            self.next_attempt_at = self._loop.time() + delay
            await asyncio.sleep(delay)

    async def _connect(self, host: str) -> QrcClient | None:
        try:
            return await QrcClient.connect(
                host,
                self._s.port,
                timeout=self._s.connect_timeout,
                on_notification=self._on_notification,
            )
        except (OSError, TimeoutError) as exc:
            reason = (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            )
            log.warning("cannot connect to core %s:%d: %s", host, self._s.port, reason)
            self._owner.host_failed(host)
            return None

    async def _serve(self, client: QrcClient, host: str) -> None:
        self.host = host
        try:
            status = await self._handshake(client)
        except StandbyUnit:
            log.warning("core %s is on standby", host)
            self._owner.host_standby(host)
            return
        except QrcError as exc:
            if exc.code == ErrorCode.LOGON_REQUIRED:
                log.error("core %s refused the gateway's logon", host)
            else:
                log.warning("core %s handshake failed: %s", host, exc.code)
            return
        except (TimeoutError, ConnectionClosed) as exc:
            log.warning("core %s handshake failed: %s", host, type(exc).__name__)
            self._owner.host_failed(host)
            return
        self._backoff.reset()
        self.connects += 1
        self._last_sent = self._loop.time()
        self.up = True
        log.info("connected to core %s:%d (connection %d)", host, self._s.port, self.index)
        self._owner.connection_up(self, status)
        await self._keepalive(client, host)

    async def _handshake(self, client: QrcClient) -> dict[str, Any]:
        timeout = self._s.request_timeout
        if self._s.username is not None or self._s.password is not None:
            secret = self._s.password.get_secret_value() if self._s.password else ""
            await client.call(
                "Logon", {"User": self._s.username or "", "Password": secret}, timeout=timeout
            )
        status = await client.call("StatusGet", 0, timeout=timeout)
        if not isinstance(status, dict):
            raise QrcError(ErrorCode.SERVER_ERROR, "StatusGet returned no status")
        if status.get("State") == "Standby":
            raise StandbyUnit
        return status

    async def _keepalive(self, client: QrcClient, host: str) -> None:
        interval = self._s.keepalive
        while not client.closed.is_set():
            wait = self._last_sent + interval - self._loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await client.closed.wait()
                continue
            self._last_sent = self._loop.time()
            try:
                await client.request("NoOp", {}, timeout=self._s.request_timeout)
            except TimeoutError:
                log.warning("core %s did not answer keep-alive; reconnecting", host)
                return
            except ConnectionClosed:
                break
        log.warning("connection %d to core %s closed", self.index, host)

    def _on_notification(self, msg: jsonrpc.Request) -> None:
        try:
            self._owner.notification(self, msg)
        except Exception:
            log.exception("failed to handle %s from the core", msg.method)
