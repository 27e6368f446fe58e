"""Work in flight, bounded by weight: a call naming 1,000 controls holds about a
megabyte while it runs (its params, the forwarded copy, the Core's answer), so the
bound counts controls, not calls.

Each connection may have `PER_CONNECTION` units in flight and the gateway `TOTAL`;
a call over either waits (first come, first served), which also stops reading from
that client: TCP pushes back instead of the gateway's memory growing.

A connection's calls run in its `Lane`; a connectionless request's in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from qsys_protocol.qrc import jsonrpc
from qsys_protocol.qrc.errors import ErrorCode, QrcError

log = logging.getLogger("qsys_gateway.connected")

PER_CONNECTION = 2048
TOTAL = 32768


def call_weight(obj: Any) -> int:
    """1 + the number of controls a JSON-RPC call names (lists in its params)."""
    params = obj.get("params") if isinstance(obj, dict) else None
    if isinstance(params, list):
        return 1 + len(params)
    if not isinstance(params, dict):
        return 1
    weight = 1
    for value in params.values():
        if isinstance(value, list):
            weight += len(value)
        elif isinstance(value, dict):
            inner = value.get("Controls")
            if isinstance(inner, list):
                weight += len(inner)
    return weight


class WeightedGate:
    """A FIFO weighted semaphore; a weight above the limit is clipped to it."""

    __slots__ = ("_waiters", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] | None = None
        """Made by the first call that has to wait (a gate per idle connection stays small)."""

    def take(self, weight: int) -> int:
        """`acquire` when it would not wait: the weight taken, or 0 (nothing taken)."""
        weight = max(1, min(weight, self.limit))
        if not self._waiters and self.used + weight <= self.limit:
            self.used += weight
            return weight
        return 0

    async def acquire(self, weight: int) -> int:
        weight = max(1, min(weight, self.limit))
        if not self._waiters and self.used + weight <= self.limit:
            self.used += weight
            return weight
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (weight, fut)
        if self._waiters is None:
            self._waiters = deque()
        self._waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(weight)  # granted just as we were cancelled
            elif self._waiters is not None:
                self._waiters.remove(entry)
                self._wake()
            raise
        return weight

    def release(self, weight: int) -> None:
        self.used -= weight
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            weight, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if self.used + weight > self.limit:
                return
            self._waiters.popleft()
            self.used += weight
            fut.set_result(None)


MAX_CALLS = 32
"""Calls one connection may have in flight (each also weighs, above)."""

Reply = dict[str, Any]


def answer_to(obj: Any, err: QrcError) -> Reply | None:
    """`err` as the reply to the JSON-RPC request `obj` (None for a notification)."""
    if isinstance(obj, dict) and "id" not in obj:
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return jsonrpc.error_message(rid if isinstance(rid, int | str) else None, err)


class Direct(Protocol):
    """A call a lane holds with no task of its own (`Lane.track`): it ends through
    `Lane.finish`, or is cancelled when the connection closes."""

    def cancel(self) -> None: ...


Held = tuple[int, int]
"""The weights a lane's call holds: the connection's and the gateway's (`Lane.take`)."""


class Lane:
    """One connection's calls in flight, run concurrently (a client may pipeline): at
    most `MAX_CALLS` and `PER_CONNECTION` units, each also under the gateway's `gate`;
    every call is answered through `send`, also when it fails or the connection closes
    under it. A call runs in a task of its own (`try_start`, `start`), or, when it can
    go to the Core at once, without one (`take`, `track`, `finish`)."""

    __slots__ = (
        "_calls",
        "_drained",
        "_gate",
        "_loop",
        "_slots",
        "_starting",
        "_tasks",
        "_weight",
        "send",
    )

    def __init__(self, send: Callable[[Reply], None], gate: WeightedGate) -> None:
        self.send = send
        self._gate = gate
        self._loop = asyncio.get_running_loop()
        """Kept: in Python 3.11 every `asyncio.get_running_loop()` is a `getpid` syscall."""
        self._slots = WeightedGate(MAX_CALLS)
        """Calls in flight, one unit each."""
        self._weight = WeightedGate(PER_CONNECTION)
        self._tasks: dict[asyncio.Task[None], tuple[Any, Held]] | None = None
        """Each call's task: its call and the weights it holds (made by the first call: an
        idle connection's lane stays small)."""
        self._calls: dict[Direct, tuple[Any, Held]] | None = None
        """The calls in flight without a task, likewise."""
        self._drained: asyncio.Future[None] | None = None
        """Set when the last call without a task ends while `drain` waits."""
        self._starting = 0
        """Tasks made whose first step has not run (their calls have not gone out yet)."""

    @property
    def behind_a_task(self) -> bool:
        """A call started in a task has not gone out yet: a later call must not overtake
        it (a Core answers a connection's calls in the order they come, so a client may
        pipeline a Set and the Get that reads it), so it runs in a task too."""
        return self._starting > 0

    def answer(self, obj: Any, err: QrcError) -> None:
        reply = answer_to(obj, err)
        if reply is not None:
            self.send(reply)

    def take(self, obj: Any) -> Held | None:
        """Room for the call `obj` now (no one waits before it): the weights taken, or
        None (nothing taken)."""
        if not self._slots.take(1):
            return None
        weight = call_weight(obj)
        mine = self._weight.take(weight)
        theirs = self._gate.take(weight) if mine else 0
        if not theirs:
            self._release(mine, 0)
            return None
        return mine, theirs

    def done(self, held: Held, reply: Reply | None) -> None:
        """A call `take` made room for, answered at once."""
        try:
            if reply is not None:
                self.send(reply)
        finally:
            self._release(*held)

    def track(self, call: Direct, obj: Any, held: Held) -> None:
        """`call` is in flight without a task; it ends with `finish`."""
        calls = self._calls
        if calls is None:
            calls = self._calls = {}
        calls[call] = (obj, held)

    def finish(self, call: Direct, reply: Reply | None) -> None:
        """`call` ended with `reply` (None: nothing to send). A call `cancel` answered
        already is not answered again."""
        entry = self._calls.pop(call, None) if self._calls else None
        if entry is None:
            return
        try:
            self.done(entry[1], reply)
        finally:
            if not self._calls:
                self._settled()

    def _settled(self) -> None:
        """No call without a task is left: `drain` stops waiting for them."""
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def try_start(
        self, obj: Any, work: Callable[[], Awaitable[Reply | None]], request_id: str = ""
    ) -> bool:
        """`start` when there is room now (no one waits before it): True when `work` runs;
        False when nothing was taken and the caller must `await start(...)`."""
        held = self.take(obj)
        if held is None:
            return False
        self.run(obj, work, held, request_id)
        return True

    def run(
        self,
        obj: Any,
        work: Callable[[], Awaitable[Reply | None]],
        held: Held,
        request_id: str = "",
    ) -> None:
        """Run `work` in a task, for a call `take` made room for."""
        self._starting += 1
        task = self._loop.create_task(self._run(obj, work, held, request_id))
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = {}
        tasks[task] = (obj, held)

    async def start(
        self, obj: Any, work: Callable[[], Awaitable[Reply | None]], request_id: str = ""
    ) -> None:
        """Wait for room for the call `obj`, then run `work` (its reply) in a task."""
        weight = call_weight(obj)
        await self._slots.acquire(1)
        mine = theirs = 0
        try:
            mine = await self._weight.acquire(weight)
            theirs = await self._gate.acquire(weight)
        except BaseException:
            self._release(mine, theirs)
            raise
        self.run(obj, work, (mine, theirs), request_id)

    async def _run(
        self,
        obj: Any,
        work: Callable[[], Awaitable[Reply | None]],
        held: Held,
        request_id: str,
    ) -> None:
        self._starting -= 1
        try:
            reply = await work()
            if reply is not None:
                self.send(reply)
        except asyncio.CancelledError:
            # the connection is closing with this call unfinished: still answered
            self.answer(obj, QrcError(ErrorCode.CORE_UNAVAILABLE, "Connection closing"))
            raise
        except Exception:
            log.exception("call failed", extra={"request_id": request_id})
            self.answer(obj, QrcError(ErrorCode.SERVER_ERROR, "Internal error"))
        finally:
            self._release(*held)
            if self._tasks is not None:  # not a done callback: one loop callback less a call
                self._tasks.pop(asyncio.current_task(self._loop), None)  # type: ignore[arg-type]

    def _release(self, mine: int, theirs: int) -> None:
        if mine:
            self._weight.release(mine)
        if theirs:
            self._gate.release(theirs)
        self._slots.release(1)

    async def drain(self, timeout: float) -> None:
        """Wait for the calls in flight (bounded)."""
        waits: list[asyncio.Future[Any]] = list(self._tasks or ())
        if self._calls:
            if self._drained is None or self._drained.done():
                self._drained = self._loop.create_future()
            waits.append(self._drained)
        if waits:
            await asyncio.wait(waits, timeout=timeout)

    async def cancel(self) -> None:
        """Cancel the calls in flight; each answers its call as it ends (one cancelled
        before its task ran, or without a task, is answered and its weight given back
        here)."""
        closing = QrcError(ErrorCode.CORE_UNAVAILABLE, "Connection closing")
        calls, self._calls = self._calls, None
        for call, (obj, held) in (calls or {}).items():
            try:
                call.cancel()
            finally:
                self.done(held, answer_to(obj, closing))
        self._settled()
        tasks = list(self._tasks or ())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
            for task in tasks:
                entry = self._tasks.pop(task, None) if self._tasks and task.done() else None
                if entry is not None:  # cancelled before its first step
                    self._starting -= 1
                    self.done(entry[1], answer_to(entry[0], closing))
