"""Watch `gateway.yaml` and apply changes without a restart.

Kubernetes updates a mounted Secret by swapping a symlink, so the watcher
compares content hashes rather than trusting mtimes or inotify events.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from qsys_protocol.config import ConfigError, GatewayConfig, load_config

from .metrics import GatewayMetrics

log = logging.getLogger("qsys_gateway.reload")


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ConfigWatcher:
    def __init__(
        self,
        path: str | Path,
        apply: Callable[[GatewayConfig], list[str]],
        metrics: GatewayMetrics,
        interval: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self._apply = apply
        self._metrics = metrics
        self.interval = interval
        self._digest = _digest(self.path)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()

    def check(self) -> bool:
        """Reload when the file's content changed; returns whether a reload was attempted."""
        digest = _digest(self.path)
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            self._metrics.config_reloads.labels("failure").inc()
            log.error("config reload refused; the previous config stays in force: %s", exc)
            return True
        pending = self._apply(config)
        self._metrics.config_reloads.labels("success").inc()
        if pending:
            log.warning(
                "config reloaded; changes to %s take effect after a restart", ", ".join(pending)
            )
        else:
            log.info("config reloaded")
        return True
