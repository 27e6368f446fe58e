"""Change groups held on behalf of client sessions, and their (re)creation on the Core."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..qrc.errors import QrcError
from ..qrc.methods import MAX_ITEMS
from .connection import UpstreamConnection

GroupId = str | int


@dataclass(eq=False, slots=True)
class GroupRecord:
    """What a client's change group contains, so it can be replayed on any connection.

    `upstream_id` is what the Core sees; `client_id` is what the client chose. `conn`
    is the socket the group currently lives on (change groups belong to a socket on
    the Core); None means it must be (re)created before use.
    """

    client_id: GroupId
    upstream_id: str
    push: Callable[[dict[str, Any]], None]
    named: dict[str, None] = field(default_factory=dict)
    components: dict[str, dict[str, None]] = field(default_factory=dict)
    autopoll: float | None = None
    conn: UpstreamConnection | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def empty(self) -> bool:
        return not self.named and not any(self.components.values())

    @property
    def placed(self) -> bool:
        return self.conn is not None and self.conn.up

    def clear(self) -> None:
        self.named.clear()
        self.components.clear()

    def replay_calls(self) -> list[tuple[str, dict[str, Any]]]:
        """The calls that rebuild this group on a fresh socket."""
        calls: list[tuple[str, dict[str, Any]]] = []
        names = list(self.named)
        for i in range(0, len(names), MAX_ITEMS):
            calls.append(
                (
                    "ChangeGroup.AddControl",
                    {"Id": self.upstream_id, "Controls": names[i : i + MAX_ITEMS]},
                )
            )
        for component, controls in self.components.items():
            refs = [{"Name": n} for n in controls]
            for i in range(0, len(refs), MAX_ITEMS):
                calls.append(
                    (
                        "ChangeGroup.AddComponentControl",
                        {
                            "Id": self.upstream_id,
                            "Component": {"Name": component, "Controls": refs[i : i + MAX_ITEMS]},
                        },
                    )
                )
        if self.autopoll is not None and calls:
            calls.append(("ChangeGroup.AutoPoll", {"Id": self.upstream_id, "Rate": self.autopoll}))
        return calls


async def place(rec: GroupRecord, conn: UpstreamConnection, timeout: float) -> None:
    """Create `rec` on `conn` from its recorded state; raises on any failure."""
    rec.conn = None
    for method, params in rec.replay_calls():
        resp = await conn.request(method, params, timeout)
        if resp.error is not None:
            code = resp.error.get("code")
            raise QrcError(
                code if isinstance(code, int) else -32603, str(resp.error.get("message"))
            )
    rec.conn = conn
