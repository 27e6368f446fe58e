"""The operator (`qsys-operator`) in a subprocess, its probes on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Self

from .net import LOOPBACK, free_port, http_get, http_ok
from .process import ManagedProcess, executable

_ADDRESS_FLAGS = ("--health-address", "--metrics-address")


class OperatorProcess(ManagedProcess):
    """`qsys-operator ARGS --health-address ... --metrics-address ...` with `KUBECONFIG`.

    Any address flags in `args` are replaced by free loopback ports. `env` is added to
    `base_env` (default: this process's environment). `log`: its stdout and stderr;
    `popen`: more `subprocess.Popen` arguments. `start()` waits for /healthz.
    """

    name = "qsys-operator"
    stop_timeout = 20.0

    def __init__(
        self,
        kubeconfig: str | Path,
        args: Iterable[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
        log: Path | None = None,
        **popen: Any,
    ) -> None:
        super().__init__()
        self.health_port, self.metrics_port = free_port(), free_port()
        kept = [a for a in args if not a.startswith(_ADDRESS_FLAGS)]
        self.argv = [
            executable("qsys-operator"),
            *kept,
            f"--health-address={LOOPBACK}:{self.health_port}",
            f"--metrics-address={LOOPBACK}:{self.metrics_port}",
        ]
        base = dict(os.environ if base_env is None else base_env)
        self.env = {**base, **(env or {}), "KUBECONFIG": str(kubeconfig)}
        self.log_path = log
        self.popen = popen

    def start(self, timeout: float = 60.0) -> Self:
        self._launch(self.argv, self.log_path, self.log_path, env=self.env, **self.popen)
        self.wait_until("/healthz", self.healthy, timeout)
        return self

    def healthy(self) -> bool:
        return http_ok(f"http://{LOOPBACK}:{self.health_port}/healthz")

    def metrics(self) -> str:
        got = http_get(f"http://{LOOPBACK}:{self.metrics_port}/metrics", timeout=5)
        if got is None or got[0] != 200:
            raise RuntimeError(f"{self.name}: /metrics answered {got}")
        return got[1].decode()
