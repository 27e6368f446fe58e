"""Logon state and call handling shared by the long-lived transports (WebSocket, QRC TCP)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from qsys_protocol.config import SubjectConfig
from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import ErrorCode, QrcError
from qsys_protocol.qrc.methods import logon_credentials, traits_of

from ..admission import Caller, Refusal
from ..client_registry import ClientHandle
from ..inflight import Lane
from .common import Services, request_id

log = logging.getLogger("qsys_gateway.connected")


def refusals(frame: bytes, err: QrcError, max_batch: int) -> list[dict[str, Any]]:
    """`err` under the id of each request in a frame the gateway will not run (the socket
    is closing): a client waiting on an id with no timeout is answered, not left hanging.
    A batch over `max_batch` calls gets one error, as when it is run."""
    try:
        payload = jsonrpc.decode_json(frame)
    except jsonrpc.InvalidMessage:
        return []
    calls = payload if isinstance(payload, list) else [payload]
    if len(calls) > max_batch:
        too_big = QrcError(ErrorCode.INVALID_REQUEST, f"Invalid request: batch over {max_batch}")
        return [jsonrpc.error_message(None, too_big)]
    out = []
    for obj in calls:
        if isinstance(obj, dict) and "method" in obj:
            rid = obj.get("id")
            if isinstance(rid, int | str) and not isinstance(rid, bool):
                out.append(jsonrpc.error_message(rid, err))
    return out


class ConnectedClient:
    """One connected client. `send` must not block; transports bound their own queues."""

    __slots__ = (
        "_answers_before_logon",
        "_api_key",
        "_key_digest",
        "_pre_logon_error",
        "_source_bound",
        "admission",
        "caller",
        "handle",
        "lane",
        "svc",
    )

    def __init__(
        self,
        svc: Services,
        handle: ClientHandle,
        *,
        answers_before_logon: bool,
        pre_logon_error: int,
        api_key: bool = False,
        source_bound: bool = False,
    ) -> None:
        self.svc = svc
        self.admission = svc.admission
        self.handle = handle
        self.caller = Caller(handle.transport, handle.source_ip)
        self._answers_before_logon = answers_before_logon
        self._pre_logon_error = pre_logon_error
        self._api_key = api_key
        self._source_bound = source_bound
        self._key_digest: bytes | None = None
        """SHA-256 of the last apiKey accepted (the key itself is not kept)."""
        self.lane = Lane(handle.send, svc.runtime.in_flight_gate)

    @property
    def send(self) -> Callable[[dict[str, Any]], None]:
        return self.handle.send

    @property
    def logged_on(self) -> bool:
        return self.caller.session is not None

    def log_on(self, subject: SubjectConfig) -> None:
        """After `admission.authenticate` succeeded for `self.caller`: the connection's
        one subject and one upstream session for life (a later Logon opens nothing).
        Raises `Refusal` when `maxClients` logged-on clients are connected already."""
        assert not self.logged_on, "one logon per connection"
        limits = self.svc.runtime.config.limits
        if not self.svc.clients.promote(self.handle, subject.name, limits.maxClients):
            self.svc.runtime.metrics.connections_refused.labels(
                self.handle.transport, "max_clients"
            ).inc()
            raise Refusal(ErrorCode.CORE_UNAVAILABLE, "Too many clients")
        self.handle.subject = subject.name  # one admitted by address may log on with a token
        self.admission.open_session(self.caller, self.send)
        self.admission.watch(self.caller, self.handle.close)

    def announce(self) -> None:
        """WebSocket: the current EngineStatus once logged on. (A raw QRC client got it on
        connect, as from a Core, which sends it then and on status change only.)"""
        status = self.svc.runtime.upstream.engine_status
        if status is not None:
            self.send(jsonrpc.notification_message("EngineStatus", status))

    async def handle_frame(self, data: bytes | str) -> None:
        """One received message: a JSON-RPC object or (WebSocket/HTTP style) a batch array."""
        rest = self.handle_frame_now(data)
        if rest is not None:
            await rest

    def handle_frame_now(self, data: bytes | str) -> Coroutine[Any, Any, Any] | None:
        """`handle_frame` as far as it goes without waiting: None when the message is
        answered or its calls run; else the rest, to await before the next message."""
        try:
            payload = jsonrpc.decode_json(data)
        except jsonrpc.InvalidMessage as err:
            self.send(jsonrpc.error_message(None, err))
            return None
        calls = payload if isinstance(payload, list) else [payload]
        if not calls:
            self.send(jsonrpc.error_message(None, QrcError(ErrorCode.INVALID_REQUEST)))
            return None
        if self._api_key or not self.logged_on:
            return self.admission.serve(
                self.caller, calls, request_id(), lane=self.lane, logon=self._logon
            )
        return self.admission.serve_now(self.caller, calls, request_id(), self.lane)

    async def _logon(self, calls: list[Any]) -> list[Any]:
        """The calls of a frame that log the connection on (an `apiKey`, a source-bound
        address, a Logon), answered here; returns those left for the logged-on path."""
        if self._api_key:
            calls = [obj for obj in calls if await self._take_api_key(obj)]
            if not calls:
                return []
        if not self.logged_on and self._source_bound:
            self._admit_by_source(calls)
        if self.logged_on:
            return calls
        # In order, as a Core would: once a Logon in the batch succeeded, the rest of
        # it (a second Logon included) takes the logged-on path.
        for i, obj in enumerate(calls):
            await self._pre_logon(obj)
            if self.logged_on:
                return calls[i + 1 :]
        return []

    def _admit_by_source(self, calls: list[Any]) -> None:
        """Raw QRC clients that cannot Logon: a source-bound subject by peer address.

        Only once a call needs a subject (not Logon, nor what is answered before logon),
        so a client that logs on keeps its token's subject.
        """
        methods = [obj.get("method") for obj in calls if isinstance(obj, dict)]
        if "Logon" in methods or all(
            not isinstance(m, str) or traits_of(m).before_logon for m in methods
        ):
            return
        subject = self.admission.authenticate_source(self.caller, request_id=request_id())
        if subject is not None:
            with contextlib.suppress(Refusal):  # full: its calls get error 10, as unbound
                self.log_on(subject)

    async def _take_api_key(self, obj: Any) -> bool:
        """Remove a QRWC `apiKey` from one call and check it; False if the call was refused.

        A first valid key logs the connection on; later keys must name the same subject
        (a connection has one subject for its life).
        """
        if not isinstance(obj, dict) or obj.get("apiKey") is None:
            return True
        key = obj.pop("apiKey")
        digest = (
            hashlib.sha256(key.encode("utf-8", "replace")).digest() if isinstance(key, str) else b""
        )
        if self._key_digest is not None and hmac.compare_digest(digest, self._key_digest):
            return True
        rid = request_id()
        probe = Caller(self.caller.transport, self.caller.source_ip)
        try:
            subject = await self.admission.authenticate(
                probe, key if isinstance(key, str) else None, request_id=rid
            )
        except Refusal as refused:
            self.lane.answer(obj, refused)
            return False
        if not self.logged_on:
            self.caller.subject, self.caller.token_hash = subject, probe.token_hash
            self.caller.expires = probe.expires
            try:
                self.log_on(subject)
            except Refusal as full:
                self.lane.answer(obj, full)
                return False
            self.announce()
        elif self.caller.subject is None or subject.name != self.caller.subject.name:
            err = Refusal(
                ErrorCode.UNAUTHENTICATED,
                "Unauthenticated: apiKey names another subject than this connection's",
            )
            self.admission.refuse(self.caller, obj, err, rid, "apiKey of another subject")
            self.lane.answer(obj, err)
            return False
        self._key_digest = digest
        return True

    async def _pre_logon(self, obj: Any) -> None:
        try:
            msg = jsonrpc.parse_object(obj)
        except jsonrpc.InvalidMessage as err:
            self.send(jsonrpc.error_message(err.request_id, err))
            return
        if not isinstance(msg, jsonrpc.Request):
            return
        result: Any
        if msg.method == "Logon":
            try:
                user, token = logon_credentials(msg.params)
            except QrcError as invalid:  # not a wrong password: not throttled
                self._answer(msg, error=invalid)
                return
            try:
                subject = await self.admission.authenticate(
                    self.caller, token or None, user=user, request_id=request_id()
                )
                self.log_on(subject)
            except Refusal as err:
                self._answer(msg, error=err)
                return
            self._answer(msg, result=True)
            if not self._answers_before_logon:
                self.announce()
            return
        elif self._answers_before_logon and traits_of(msg.method).before_logon:
            result = self._before_logon(msg.method)
            if result is None:
                self._answer(msg, error=QrcError(ErrorCode.CORE_UNAVAILABLE))
                return
        else:
            self._answer(msg, error=QrcError(self._pre_logon_error))
            return
        self._answer(msg, result=result)

    def _before_logon(self, method: str) -> Any:
        """A Core's answer to NoOp / StatusGet on a socket not logged on (None: unknown)."""
        if method == "StatusGet":
            return self.svc.runtime.upstream.engine_status
        return True

    def _answer(
        self, msg: jsonrpc.Request, *, result: Any = None, error: QrcError | None = None
    ) -> None:
        if msg.is_notification:
            return
        if error is not None:
            self.send(jsonrpc.error_message(msg.id, error))
        else:
            self.send(jsonrpc.result_message(msg.id, result))

    async def drain(self, timeout: float) -> None:
        """Wait for this client's in-flight calls (bounded)."""
        await self.lane.drain(timeout)

    async def close(self) -> None:
        await self.lane.cancel()
        try:
            async with asyncio.timeout(5.0):
                await self.admission.release(self.caller)
        except (TimeoutError, QrcError, OSError):
            log.info("could not destroy change groups of a closed session")
