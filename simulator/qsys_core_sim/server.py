"""The simulator's TCP side: QRC framing, Logon, EngineStatus, AutoPoll, idle timeout, faults.

`CoreSimulator` runs inside any asyncio loop, so tests can start it in-process
and drive faults directly; `qsys-core-sim` wraps it as a CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from typing import Any, cast

from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import ErrorCode, QrcError
from qsys_protocol.qrc.framing import FRAME_TOO_LARGE, FrameDecoder, encode_frame
from qsys_protocol.qrc.methods import ChangeGroupAutoPollParams, LogonParams, parse_params

from .design import Design, load_design
from .engine import ChangeGroup, Engine, Session
from .faults import Faults

log = logging.getLogger("qsys_core_sim")

_OPEN_METHODS = frozenset({"Logon", "NoOp", "StatusGet"})


class _Connection(asyncio.Protocol):
    def __init__(self, sim: CoreSimulator) -> None:
        self.sim = sim
        self.loop = asyncio.get_running_loop()
        self.decoder = FrameDecoder(sim.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.last_rx = self.loop.time()
        self.idle_handle: asyncio.TimerHandle | None = None
        self.autopolls: dict[str, asyncio.Task[None]] = {}
        self.out: list[bytes] = []
        self.closed = False

    # ---- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.sim.faults.refuse_connections:
            self.transport.abort()
            return
        self.session = self.sim.engine.open_session()
        self.session.logged_on = not self.sim.requires_logon
        self.sim.connections.add(self)
        self.send(jsonrpc.notification_message("EngineStatus", self.sim.engine.engine_status()))
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        for task in self.autopolls.values():
            task.cancel()
        self.autopolls.clear()
        if self.session is not None:
            self.sim.engine.close_session(self.session)
        self.sim.connections.discard(self)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        for frame in self.decoder.feed(data):
            if self.closed:
                return
            if frame is FRAME_TOO_LARGE:
                err = QrcError(ErrorCode.INVALID_REQUEST, "Invalid request: message too large")
                self._reply(jsonrpc.error_message(None, err))
            else:
                assert isinstance(frame, bytes)
                self._handle(frame)
        self._flush()

    # ---- request handling ---------------------------------------------------

    def _handle(self, frame: bytes) -> None:
        try:
            msg = jsonrpc.parse_message(frame)
        except jsonrpc.InvalidMessage as exc:
            self._reply(jsonrpc.error_message(exc.request_id, exc))
            return
        if not isinstance(msg, jsonrpc.Request):
            return
        faults = self.sim.faults
        if faults.take_drop():
            self.abort()
            return
        self.sim.requests += 1
        try:
            result = self._dispatch(msg)
        except QrcError as exc:
            reply = jsonrpc.error_message(msg.id, exc)
        except Exception:
            log.exception("simulator failed on %s", msg.method)
            reply = jsonrpc.error_message(msg.id, QrcError(ErrorCode.SERVER_ERROR))
        else:
            reply = jsonrpc.result_message(msg.id, result)
        if msg.is_notification or faults.take_swallow():
            return
        self._reply(reply)

    def _dispatch(self, req: jsonrpc.Request) -> Any:
        assert self.session is not None
        method = req.method
        params = parse_params(method, req.params) if method != "ChangeGroup.AutoPoll" else None
        if method == "Logon":
            assert isinstance(params, LogonParams)
            return self._logon(params)
        if not self.session.logged_on and method not in _OPEN_METHODS:
            raise QrcError(ErrorCode.LOGON_REQUIRED)
        if self.sim.engine.state == "Standby" and method not in _OPEN_METHODS:
            raise QrcError(ErrorCode.STANDBY)
        if method == "ChangeGroup.AutoPoll":
            auto = parse_params(method, req.params)
            assert isinstance(auto, ChangeGroupAutoPollParams)
            return self._autopoll(auto)
        return self.sim.engine.call(self.session, method, params)

    def _logon(self, p: LogonParams) -> bool:
        assert self.session is not None
        sim = self.sim
        if not sim.requires_logon:
            self.session.logged_on = True
            return True
        ok = (
            not sim.faults.refuse_logon
            and hmac.compare_digest(p.User.encode(), (sim.username or "").encode())
            and hmac.compare_digest(
                p.Password.get_secret_value().encode(), (sim.password or "").encode()
            )
        )
        if not ok:
            raise QrcError(ErrorCode.LOGON_REQUIRED, "Logon failed")
        self.session.logged_on = True
        return True

    def _autopoll(self, p: ChangeGroupAutoPollParams) -> bool:
        assert self.session is not None
        group = self.sim.engine.group(self.session, p.Id)
        key = str(group.id)
        old = self.autopolls.pop(key, None)
        if old is not None:
            old.cancel()
        self.autopolls[key] = self.loop.create_task(self._autopoll_loop(key, group, p.Rate))
        return True

    async def _autopoll_loop(self, key: str, group: ChangeGroup, rate: float) -> None:
        session = self.session
        assert session is not None
        while not self.closed:
            await asyncio.sleep(rate)
            if session.change_groups.get(key) is not group:
                return  # destroyed (a new group with the same Id is not on AutoPoll)
            changes = self.sim.engine.poll_group(group)
            if changes:
                self.send(
                    jsonrpc.notification_message(
                        "ChangeGroup.Poll", {"Id": group.id, "Changes": changes}
                    )
                )

    # ---- output -------------------------------------------------------------

    def _reply(self, message: dict[str, Any]) -> None:
        data = encode_frame(message)
        latency = self.sim.faults.latency
        if latency > 0:
            self.loop.call_later(latency, self._write, data)
        else:
            self.out.append(data)

    def _flush(self) -> None:
        if self.out:
            self._write(b"".join(self.out))
            self.out.clear()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def send(self, message: dict[str, Any]) -> None:
        self._write(encode_frame(message))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    def _arm_idle(self) -> None:
        timeout = self.sim.idle_timeout
        if timeout is None or timeout <= 0:
            return
        remaining = self.last_rx + timeout - self.loop.time()
        if remaining <= 0:
            log.info("closing idle connection")
            if self.transport is not None:
                self.transport.close()
            return
        self.idle_handle = self.loop.call_later(remaining, self._arm_idle)


class CoreSimulator:
    """A simulated Q-SYS Core listening on loopback.

    Use as `async with CoreSimulator() as sim:` or `await sim.start()` / `await sim.close()`;
    `stop()` and `start()` in between take the Core away and bring it back on the same port.
    """

    def __init__(
        self,
        design: Design | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str | None = None,
        password: str | None = None,
        idle_timeout: float | None = 60.0,
        max_frame_bytes: int = 1024 * 1024,
        max_change_groups: int = 512,
    ) -> None:
        self.design = design or load_design()
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.idle_timeout = idle_timeout
        self.max_frame_bytes = max_frame_bytes
        self.engine = Engine(self.design, max_change_groups=max_change_groups)
        self.faults = Faults()
        self.connections: set[_Connection] = set()
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._held: socket.socket | None = None

    @property
    def requires_logon(self) -> bool:
        return self.username is not None or self.password is not None

    async def start(self) -> CoreSimulator:
        loop = asyncio.get_running_loop()
        self._release()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("core simulator listening on %s:%d", self.host, self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.drop_connections()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None
            self._hold()

    async def close(self) -> None:
        """Stop for good and give the port back."""
        await self.stop()
        self._release()

    def _hold(self) -> None:
        """Keep the stopped Core's port bound, not listening, until `start` or `close`.

        A connection to it is refused, as to a rebooting Core. Without this, another
        listener on this machine could take the freed port and answer in the Core's place,
        or a client's connect could pick it as its own source port and reach itself.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for reuse in (False, True):  # SO_REUSEADDR only when closed connections linger
            held = socket.socket(family)
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse))
            try:
                held.bind((self.host, self.port))
            except OSError:
                held.close()
                continue
            self._held = held
            return
        log.warning("could not hold port %d while stopped", self.port)

    def _release(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    @property
    def running(self) -> bool:
        return self._server is not None

    async def __aenter__(self) -> CoreSimulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def drop_connections(self) -> None:
        """Abort every client socket (as a network fault or a Core reboot would)."""
        for conn in list(self.connections):
            conn.abort()
            conn.connection_lost(None)

    def stop_reading(self) -> None:
        """Every open socket stops being read (a hung Core: its TCP window closes and what
        is sent to it stays unsent); connections made afterwards are served."""
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.pause_reading()

    async def restart(self, downtime: float = 0.0) -> None:
        """Simulate a Core reboot: sockets drop, change groups are lost, values are kept."""
        await self.stop()
        if downtime > 0:
            await asyncio.sleep(downtime)
        await self.start()

    def set_state(self, state: str) -> None:
        """Switch between Active, Standby and Idle; clients get a pushed EngineStatus."""
        self.engine.state = state
        status = jsonrpc.notification_message("EngineStatus", self.engine.engine_status())
        for conn in list(self.connections):
            conn.send(status)

    def set_control(self, name: str, value: float | str, component: str | None = None) -> None:
        """Change a control from the Core side, as a person at a touch panel would."""
        self.engine.set_value(self.engine.find_control(name, component), value)

    def get_control(self, name: str, component: str | None = None) -> dict[str, Any]:
        self.engine.advance_ramps()
        return self.engine.find_control(name, component).state()
