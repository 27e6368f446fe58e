"""A throwaway `redis-server` on loopback (the gateway's shared rate-limit storage)."""

from __future__ import annotations

import shutil
from typing import Self

from .net import LOOPBACK, free_port, port_open
from .process import ManagedProcess


class RedisProcess(ManagedProcess):
    """`redis-server` without persistence on a free loopback port; `start()` again after
    `kill()` brings it back on the same port."""

    name = "redis-server"

    def __init__(self, host: str = LOOPBACK) -> None:
        super().__init__()
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (hack/install-system-deps.sh)")
        self.binary = binary
        self.host = host
        self.port = free_port(host)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> Self:
        argv = [self.binary, "--bind", self.host, "--port", str(self.port)]
        self._launch([*argv, "--save", "", "--appendonly", "no"], None, None)
        self.wait_until("listening", lambda: port_open(self.port, self.host), timeout)
        return self
