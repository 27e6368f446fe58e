"""The Core simulator in a subprocess (`qsys-core-sim`), for tests that need a real kill.

The in-process `CoreSimulator` (re-exported by the package) is the lighter choice when
the test runs an event loop anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from .net import LOOPBACK, free_port, port_open
from .process import ManagedProcess, executable


class SimulatorProcess(ManagedProcess):
    """`qsys-core-sim ARGS` on `host:port` (a free loopback port by default).

    `log`: a file for its stdout and stderr (None: discarded). `start()` again after
    `stop()`/`kill()` brings it back on the same port.
    """

    name = "qsys-core-sim"
    stop_timeout = 5.0

    def __init__(
        self,
        *args: str,
        host: str = LOOPBACK,
        port: int | None = None,
        log: Path | None = None,
    ) -> None:
        super().__init__()
        self.host = host
        self.port = port or free_port(host)
        self.args = args
        self.log_path = log

    def start(self, timeout: float = 15.0) -> Self:
        argv = [executable("qsys-core-sim"), "--host", self.host, "--port", str(self.port)]
        self._launch([*argv, *self.args], self.log_path, self.log_path)
        self.wait_until("listening", lambda: port_open(self.port, self.host), timeout)
        return self
