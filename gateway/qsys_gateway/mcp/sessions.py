"""The gateway's own table of MCP sessions and of the HTTP requests in flight on them.

The SDK keeps no public view of its sessions, so the gateway counts a session the moment
a response carries an `Mcp-Session-Id` it has not seen (whatever the request's body
said), and forgets it when the client ends it, when it has been idle as long as the SDK
allows, or when the token that last used it is no longer admitted.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..admission import Caller

TRANSPORT = "mcp"


@dataclass(eq=False)
class McpSession:
    sid: str
    subject: str
    caller: Caller
    """Stable per session (watched by the credential sweep); holds the credential of the
    request that used the session last."""
    last_active: float = field(default_factory=time.monotonic)
    ids: set[str] = field(default_factory=set)
    """JSON-RPC request ids in flight on the session (their canonical JSON)."""
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    """HTTP handlers in flight on the session (including open streams)."""

    def use(self, caller: Caller) -> None:
        self.caller.subject = caller.subject
        self.caller.token_hash = caller.token_hash
        self.caller.expires = caller.expires
        self.last_active = time.monotonic()


class SessionTable:
    def __init__(self) -> None:
        self._sessions: dict[str, McpSession] = {}
        self._by_subject: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, sid: str) -> McpSession | None:
        return self._sessions.get(sid)

    def count(self, subject: str) -> int:
        return len(self._by_subject.get(subject, ()))

    def add(self, sid: str, caller: Caller) -> McpSession:
        assert caller.subject is not None
        own = Caller(
            TRANSPORT,
            caller.source_ip,
            subject=caller.subject,
            token_hash=caller.token_hash,
            expires=caller.expires,
        )
        session = McpSession(sid, caller.subject.name, own)
        self._sessions[sid] = session
        self._by_subject.setdefault(session.subject, set()).add(sid)
        return session

    def drop(self, sid: str) -> McpSession | None:
        session = self._sessions.pop(sid, None)
        if session is not None:
            sids = self._by_subject.get(session.subject)
            if sids is not None:
                sids.discard(sid)
                if not sids:
                    del self._by_subject[session.subject]
        return session

    def idle(self, seconds: float) -> list[str]:
        """Sessions with nothing in flight for `seconds` (the SDK has ended them too)."""
        cutoff = time.monotonic() - seconds
        return [sid for sid, s in self._sessions.items() if not s.tasks and s.last_active < cutoff]

    def all(self) -> list[McpSession]:
        return list(self._sessions.values())


def request_ids(body: bytes) -> list[str] | None:
    """The ids of the JSON-RPC requests in a POST body, as canonical JSON (notifications
    and responses carry none); None when the body is not JSON (the SDK answers it).

    Parsed as leniently as the SDK parses (NaN and Infinity are accepted), so a body
    the SDK runs is never one whose ids were missed."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return None
    messages = message if isinstance(message, list) else [message]
    out: list[str] = []
    for m in messages:
        if isinstance(m, dict) and "method" in m and m.get("id") is not None:
            out.append(json.dumps(m["id"], sort_keys=True))
    return out


def opens_session(body: bytes) -> bool:
    """Whether a POST body holds an `initialize` request (lenient, like `request_ids`)."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return False
    messages = message if isinstance(message, list) else [message]
    return any(isinstance(m, dict) and m.get("method") == "initialize" for m in messages)
