"""UpstreamPool sessions for connectionless callers (HTTP): one per subject, closed when idle.

HTTP has no connection to hang change groups on, so a subject's HTTP calls
share one session; its change groups live until it is idle for `idle_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from .upstream import UpstreamPool, UpstreamSession


class SubjectSessions:
    def __init__(
        self,
        upstream: UpstreamPool,
        idle_seconds: float = 300.0,
        can_read: Callable[[str, str, str], bool] | None = None,
    ) -> None:
        self._upstream = upstream
        self._can_read = can_read
        self._idle = idle_seconds
        self._sessions: dict[str, tuple[UpstreamSession, float]] = {}
        self._reaper: asyncio.Task[None] | None = None

    def get(self, subject: str) -> UpstreamSession:
        entry = self._sessions.get(subject)
        session = entry[0] if entry else self._open(subject)
        self._sessions[subject] = (session, time.monotonic())
        return session

    def _open(self, subject: str) -> UpstreamSession:
        check = self._can_read
        if check is None:
            return self._upstream.open_session(lambda _msg: None, owner=subject)
        return self._upstream.open_session(
            lambda _msg: None,
            lambda component, control: check(subject, component, control),
            owner=subject,
        )

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, self._idle / 2))
            cutoff = time.monotonic() - self._idle
            for subject, (session, used) in list(self._sessions.items()):
                if used < cutoff:
                    del self._sessions[subject]
                    await session.close()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for session, _ in self._sessions.values():
            await session.close()
        self._sessions.clear()
