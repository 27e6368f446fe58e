"""Sharing the real node between test processes: a readers-writer lock over files.

Under `make test` the test files on the real node run in lanes (an xdist worker each)
against one cluster. A file whose tests stay inside namespaces of their own takes the
node *shared*; a file that changes what every namespace sees (a cluster-wide operator,
other CRDs, a drain, the node's teardown) takes it *exclusive*, so that no other file's
pods, operators or CRs are live beside it (docs/testing.md, "The real node in
lanes"). Taking one mode lets go of the other first: no process waits while it holds
the lock, so there is no deadlock.

Built on flock(2): the lock file held LOCK_SH or LOCK_EX, and a turnstile taken by
both kinds first, which a waiting writer keeps until it is done, so that a lane that
keeps starting shared files cannot starve another lane's exclusive one.
"""

from __future__ import annotations

import enum
import fcntl
import os
import shutil
import time
from pathlib import Path

FINISHED_KEPT_S = 3600.0
"""How long an earlier run's lane markers (mark) stay."""


class Mode(enum.Enum):
    SHARED = "shared"
    EXCLUSIVE = "exclusive"


class NodeShare:
    """One process's handle on the lock in directory `where` (created if missing)."""

    def __init__(self, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        self._lanes = where / "lanes"
        self._lock_path = where / "node.lock"
        self._turnstile_path = where / "node.turnstile"
        self._lock: int | None = None
        self._turnstile: int | None = None
        self.held: Mode | None = None

    def _open(self, path: Path) -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def acquire(self, mode: Mode) -> None:
        """Take the node in mode, waiting for as long as another process keeps the other
        mode (its tests' timeouts bound that); a held lock of the other mode is released
        first."""
        if self.held is mode:
            return
        self.release()
        turnstile = self._open(self._turnstile_path)
        lock = self._open(self._lock_path)
        try:
            fcntl.flock(turnstile, fcntl.LOCK_EX)
            if mode is Mode.SHARED:
                fcntl.flock(lock, fcntl.LOCK_SH)
                os.close(turnstile)
                turnstile = -1
            else:
                fcntl.flock(lock, fcntl.LOCK_EX)
        except BaseException:
            for fd in (turnstile, lock):
                if fd >= 0:
                    os.close(fd)
            raise
        self._lock = lock
        self._turnstile = turnstile if turnstile >= 0 else None
        self.held = mode

    def release(self) -> None:
        """Let the node go (closing a descriptor drops its flock)."""
        for fd in (self._lock, self._turnstile):
            if fd is not None:
                os.close(fd)
        self._lock = self._turnstile = None
        self.held = None

    def mark(self, run: str, lane: str, event: str) -> None:
        """Record that this process's lane of run (a test run's id) reached event:
        `started` (its first test came), `held` (it first held the node), `finished`
        (its last real-node test ended)."""
        (self._lanes / run).mkdir(parents=True, exist_ok=True)
        (self._lanes / run / f"{lane}.{event}").touch()
        for old in self._lanes.iterdir():
            if old.name != run and time.time() - old.stat().st_mtime > FINISHED_KEPT_S:
                shutil.rmtree(old, ignore_errors=True)

    def marked(self, run: str, lanes: set[str], event: str) -> set[str]:
        """Those of lanes that reached event in run."""
        return {lane for lane in lanes if (self._lanes / run / f"{lane}.{event}").exists()}

    def wait(self, run: str, lanes: set[str], event: str, timeout: float) -> set[str]:
        """Wait until every one of lanes reached event in run: those that had not after
        timeout (none when they all did)."""
        deadline = time.monotonic() + timeout
        while True:
            missing = lanes - self.marked(run, lanes, event)
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(1.0)
