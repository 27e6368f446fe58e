"""Subprocesses that are always stopped: SIGTERM, then SIGKILL after a bound."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

from .net import wait_for

T = TypeVar("T")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM (and SIGCONT, in case it was paused), then SIGKILL if it does not exit in
    `timeout`; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


def executable(name: str) -> str:
    """A console script of this environment (beside the running interpreter), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} is not installed (not beside {sys.executable}, not on PATH)"
        )
    return found


class ManagedProcess:
    """A subprocess with its output in files (or discarded); `with` (or `async with`)
    starts it and stops it on the way out.

    Subclasses define `start()`: launch with `_launch` and wait until the program serves.
    """

    name = "process"
    stop_timeout = 10.0

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None  # where the process's diagnostics go (stderr)

    def start(self) -> Self:
        raise NotImplementedError

    def _launch(
        self,
        argv: list[str],
        stdout: Path | None,
        stderr: Path | None,
        *,
        env: dict[str, str] | None = None,
        **popen: Any,
    ) -> None:
        """Start `argv`; `stdout`/`stderr` are appended to (None: discarded; the same path:
        one file). `env`: the whole environment (None: this process's)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self.proc.pid})")
        self.log = stderr
        env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        out = stdout.open("ab") if stdout is not None else None
        try:
            if stderr is not None and stderr == stdout:
                err: Any = subprocess.STDOUT
            else:
                err = stderr.open("ab") if stderr is not None else subprocess.DEVNULL
            try:
                self.proc = subprocess.Popen(  # noqa: S603 - argv built by this kit
                    argv, stdout=out or subprocess.DEVNULL, stderr=err, env=env, **popen
                )
            finally:
                if err not in (subprocess.STDOUT, subprocess.DEVNULL):
                    err.close()
        finally:
            if out is not None:
                out.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def output(self) -> str:
        """What the process wrote to its log so far ("" when discarded)."""
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text("utf-8", errors="replace")

    def check(self) -> None:
        """Raise when the process has exited (with the end of its log)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}: {self.output()[-3000:]}"
            )

    def wait_until(self, what: str, probe: Callable[[], T | None], timeout: float) -> T:
        """`wait_for(probe)` that fails at once when the process dies meanwhile."""

        def checked() -> T | None:
            self.check()
            return probe()

        return wait_for(f"{self.name}: {what}", checked, timeout, 0.05)

    def terminate(self) -> None:
        """SIGTERM without waiting (for tests of a graceful shutdown)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, SIGKILL after `timeout`; the exit code (None when never started)."""
        if self.proc is None:
            return None
        return stop_process(self.proc, self.stop_timeout if timeout is None else timeout)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to say goodbye (a crash, a power cut)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        """`async with`: start and stop in a thread, so this event loop (an in-process
        simulator, clients) keeps running meanwhile."""
        return await asyncio.to_thread(self.__enter__)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.__exit__, *exc)
