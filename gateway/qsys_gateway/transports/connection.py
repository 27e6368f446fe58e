"""Logon state and call handling shared by the long-lived transports (WebSocket, QRC TCP)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Any

from ..clients import ClientHandle
from ..config import SubjectConfig
from ..pipeline import Caller
from ..qrc import jsonrpc
from ..qrc.errors import ErrorCode, QrcError
from ..upstream import UpstreamSession
from .common import Refusal, Services, authenticate, rate_limit, request_id

log = logging.getLogger("qsys_gateway.connection")

MAX_IN_FLIGHT = 32
LOGON_TIMEOUT = 10.0


class ClientConnection:
    """One connected client. `send` must not block; transports bound their own queues."""

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
        self.handle = handle
        self.caller: Caller | None = None
        self._answers_before_logon = answers_before_logon
        self._pre_logon_error = pre_logon_error
        self._api_key = api_key
        self._source_bound = source_bound
        self._key_digest: bytes | None = None
        """SHA-256 of the last apiKey accepted (the key itself is not kept)."""
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def send(self) -> Callable[[dict[str, Any]], None]:
        return self.handle.send

    @property
    def logged_on(self) -> bool:
        return self.caller is not None

    def log_on(self, subject: SubjectConfig, *, push_status: bool = True) -> None:
        rt = self.svc.runtime
        name = subject.name
        session: UpstreamSession = rt.upstream.open_session(
            self.send, lambda component, control: rt.rules.policy.can_read(name, component, control)
        )
        self.caller = Caller(subject, self.handle.transport, self.handle.source_ip, session)
        self.handle.subject = subject.name
        status = self.svc.runtime.upstream.engine_status
        if push_status and status is not None:
            self.send(jsonrpc.notification_message("EngineStatus", status))

    async def handle_frame(self, data: bytes | str) -> None:
        """One received message: a JSON-RPC object or (WebSocket/HTTP style) a batch array."""
        try:
            payload = jsonrpc.decode_json(data)
        except jsonrpc.InvalidMessage as err:
            self.send(jsonrpc.error_message(None, err))
            return
        calls = payload if isinstance(payload, list) else [payload]
        if not calls:
            self.send(jsonrpc.error_message(None, QrcError(ErrorCode.INVALID_REQUEST)))
            return
        if self._api_key:
            calls = [obj for obj in calls if self._take_api_key(obj)]
            if not calls:
                return
        if self.caller is None and self._source_bound:
            self._admit_by_source(calls)
        if self.caller is None:
            for obj in calls:
                self._pre_logon(obj)
            return
        rid = request_id()
        refused = await rate_limit(
            self.svc, self.caller.subject, calls, self.handle.transport, self.handle.source_ip, rid
        )
        if refused is not None:
            for obj in calls:
                self._reply_error(obj, refused)
            return
        for obj in calls:
            await self._slots.acquire()
            task = asyncio.get_running_loop().create_task(self._call(obj, rid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _admit_by_source(self, calls: list[Any]) -> None:
        """Raw QRC clients that cannot Logon: a source-bound subject by peer address.

        Only once a call needs a subject (not Logon, nor NoOp/StatusGet, which are
        answered before logon anyway), so a client that logs on keeps its token subject.
        """
        methods = {obj.get("method") for obj in calls if isinstance(obj, dict)}
        if not methods - {"Logon", "NoOp", "StatusGet"} or "Logon" in methods:
            return
        subject = self.svc.runtime.rules.authenticator.by_source(self.handle.source_ip)
        if subject is None:
            return
        self.log_on(subject, push_status=False)
        self.svc.runtime.audit.record(
            request_id=request_id(),
            subject=subject.name,
            source_ip=self.handle.source_ip,
            transport=self.handle.transport,
            method="Logon",
            decision="allow",
            reason="source address in the subject's sourceCIDRs",
            outcome="ok",
            duration_ms=0.0,
        )

    def _take_api_key(self, obj: Any) -> bool:
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
        transport, source = self.handle.transport, self.handle.source_ip
        rid = request_id()
        try:
            subject = authenticate(
                self.svc,
                token=key if isinstance(key, str) else None,
                user=None,
                source_ip=source,
                transport=transport,
                rid=rid,
                obj=obj,
            )
        except Refusal as refused:
            self._reply_error(obj, refused)
            return False
        if self.caller is None:
            self.log_on(subject)
        elif subject.name != self.caller.subject.name:
            err = Refusal(
                ErrorCode.UNAUTHENTICATED,
                "Unauthenticated: apiKey names another subject than this connection's",
            )
            self.svc.pipeline.reject(
                self.caller.subject.name,
                transport,
                source,
                obj,
                err,
                rid,
                "apiKey of another subject",
            )
            self._reply_error(obj, err)
            return False
        self._key_digest = digest
        return True

    async def _call(self, obj: Any, rid: str) -> None:
        try:
            assert self.caller is not None
            response = await self.svc.pipeline.call(self.caller, obj, rid)
            if response is not None:
                self.send(response)
        except Exception:
            log.exception("call failed", extra={"request_id": rid})
            self._reply_error(obj, QrcError(ErrorCode.SERVER_ERROR, "Internal error"))
        finally:
            self._slots.release()

    def _reply_error(self, obj: Any, err: QrcError) -> None:
        rid = obj.get("id") if isinstance(obj, dict) else None
        if isinstance(obj, dict) and "id" not in obj:
            return
        self.send(jsonrpc.error_message(rid if isinstance(rid, int | str) else None, err))

    def _pre_logon(self, obj: Any) -> None:
        try:
            msg = jsonrpc.parse_object(obj)
        except jsonrpc.InvalidMessage as err:
            self.send(jsonrpc.error_message(err.request_id, err))
            return
        if not isinstance(msg, jsonrpc.Request):
            return
        result: Any
        if msg.method == "Logon":
            params = msg.params if isinstance(msg.params, dict) else {}
            user, token = params.get("User"), params.get("Password")
            try:
                subject = authenticate(
                    self.svc,
                    token=token if isinstance(token, str) else None,
                    user=user if isinstance(user, str) else "",
                    source_ip=self.handle.source_ip,
                    transport=self.handle.transport,
                    rid=request_id(),
                )
            except Refusal as err:
                self._answer(msg, error=err)
                return
            self.log_on(subject)
            result = True
        elif self._answers_before_logon and msg.method == "NoOp":
            result = True
        elif self._answers_before_logon and msg.method == "StatusGet":
            status = self.svc.runtime.upstream.engine_status
            if status is None:
                self._answer(msg, error=QrcError(ErrorCode.CORE_UNAVAILABLE))
                return
            result = status
        else:
            self._answer(msg, error=QrcError(self._pre_logon_error))
            return
        self._answer(msg, result=result)

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
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.caller is not None:
            try:
                await asyncio.wait_for(self.caller.session.close(), 5.0)
            except (TimeoutError, QrcError, OSError):
                log.info("could not destroy change groups of a closed session")
            self.caller = None
