"""The `Type` of each control of a component, learnt from `Component.GetControls` and
cached (bounded) so value ranges can be judged for the value the Core will apply."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from qsys_protocol.qrc.errors import QrcError

from .errors import CoreUnavailable

log = logging.getLogger("qsys_gateway.upstream")

MAX_COMPONENTS = 512
MAX_CONTROLS = 100_000
"""Control names held over all cached components; least recently used components go first."""

Fetch = Callable[[str, Any], Awaitable[Any]]


class ControlTypes:
    def __init__(
        self, fetch: Fetch, max_components: int = MAX_COMPONENTS, max_controls: int = MAX_CONTROLS
    ) -> None:
        self._fetch = fetch
        self._max_components = max_components
        self._max_controls = max_controls
        self._cache: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._held = 0
        self._pending: dict[str, asyncio.Future[dict[str, str] | None]] = {}
        self.fetches = 0

    def __len__(self) -> int:
        return len(self._cache)

    async def get(self, component: str) -> dict[str, str] | None:
        """Control name -> type, or None when the Core cannot say (unknown component,
        no connection): callers then treat every type as unknown."""
        cached = self._cache.get(component)
        if cached is not None:
            self._cache.move_to_end(component)
            return cached
        pending = self._pending.get(component)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._pending[component] = pending
            try:
                pending.set_result(await self._load(component))
            finally:
                del self._pending[component]
                if not pending.done():
                    pending.cancel()
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            if pending.cancelled():  # the fetching caller went away: no answer
                return None
            raise

    async def _load(self, component: str) -> dict[str, str] | None:
        self.fetches += 1
        try:
            result = await self._fetch("Component.GetControls", {"Name": component})
        except (QrcError, CoreUnavailable, TimeoutError) as exc:
            log.info("control types of a component unavailable: %s", type(exc).__name__)
            return None
        controls = result.get("Controls") if isinstance(result, dict) else None
        if not isinstance(controls, list):
            return None
        types = {
            c["Name"]: c["Type"]
            for c in controls
            if isinstance(c, dict)
            and isinstance(c.get("Name"), str)
            and isinstance(c.get("Type"), str)
        }
        self._store(component, types)
        return types

    def _store(self, component: str, types: dict[str, str]) -> None:
        if len(types) > self._max_controls:
            return
        self._cache[component] = types
        self._held += len(types)
        while len(self._cache) > self._max_components or self._held > self._max_controls:
            _, dropped = self._cache.popitem(last=False)
            self._held -= len(dropped)

    def clear(self) -> None:
        """A new design may change any component: forget everything."""
        self._cache.clear()
        self._held = 0
