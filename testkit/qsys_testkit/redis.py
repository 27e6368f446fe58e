"""A throwaway `redis-server` on loopback (the gateway's shared rate-limit storage), and
`redis-sentinel` processes watching one (Redis Sentinel, for fail-over tests)."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path
from typing import Self

from .net import LOOPBACK, free_port, port_open
from .process import ManagedProcess


def _binary(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        raise FileNotFoundError(f"{name} is not installed (hack/install-system-deps.sh)")
    return binary


def redis_command(host: str, port: int, *args: str, timeout: float = 5.0) -> str:
    """One command over RESP on a fresh socket; the reply's first line without its type
    byte (bulk and array replies: their whole text), for probes and fail-over steps."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"".join(parts))
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        if reply[:1] in (b"*", b"$"):
            sock.settimeout(0.2)
            try:
                while chunk := sock.recv(65536):
                    reply += chunk
            except TimeoutError:
                pass
    return reply.decode(errors="replace")[1:].strip()


class _ScratchProcess(ManagedProcess):
    """A process with a working directory of its own, removed when it stops."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))

    def stop(self, timeout: float | None = None) -> int | None:
        code = super().stop(timeout)
        shutil.rmtree(self.dir, ignore_errors=True)
        return code


class RedisProcess(_ScratchProcess):
    """`redis-server` without persistence on a free loopback port; `start()` again after
    `kill()` brings it back on the same port. `replica_of`: a replica of that server."""

    name = "redis-server"

    def __init__(self, host: str = LOOPBACK, *, replica_of: RedisProcess | None = None) -> None:
        super().__init__("qsys-redis-")
        self.binary = _binary("redis-server")
        self.host = host
        self.port = free_port(host)
        self.replica_of = replica_of

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> Self:
        self.dir.mkdir(exist_ok=True)
        argv = [self.binary, "--bind", self.host, "--port", str(self.port)]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        if self.replica_of is not None:
            argv += ["--replicaof", self.replica_of.host, str(self.replica_of.port)]
        self._launch(argv, None, None)
        self.wait_until("listening", lambda: port_open(self.port, self.host), timeout)
        return self

    def command(self, *args: str) -> str:
        return redis_command(self.host, self.port, *args)


class SentinelProcess(_ScratchProcess):
    """`redis-sentinel` on a free loopback port watching `primary` as `primary_name`,
    quick to fail over (down after `down_after_ms`); its config file is its own
    (Sentinel rewrites it). `url_of(sentinels)` is the gateway's storage URI."""

    name = "redis-sentinel"

    def __init__(
        self,
        primary: RedisProcess,
        *,
        primary_name: str = "qsys",
        quorum: int = 2,
        down_after_ms: int = 1000,
        host: str = LOOPBACK,
    ) -> None:
        super().__init__("qsys-sentinel-")
        self.binary = _binary("redis-sentinel")
        self.host = host
        self.port = free_port(host)
        self.primary_name = primary_name
        self.config = self.dir / "sentinel.conf"
        self.config.write_text(
            f"bind {host}\nport {self.port}\ndir {self.dir}\n"
            f"sentinel monitor {primary_name} {primary.host} {primary.port} {quorum}\n"
            f"sentinel down-after-milliseconds {primary_name} {down_after_ms}\n"
            f"sentinel failover-timeout {primary_name} 10000\n"
            f"sentinel parallel-syncs {primary_name} 1\n"
        )

    def start(self, timeout: float = 10.0) -> Self:
        self._launch([self.binary, str(self.config)], None, None)
        self.wait_until("listening", lambda: port_open(self.port, self.host), timeout)
        return self

    def state(self) -> dict[str, str]:
        """`SENTINEL MASTER <name>`: what this sentinel knows of the primary ({}: no answer)."""
        try:
            reply = redis_command(self.host, self.port, "SENTINEL", "MASTER", self.primary_name)
        except OSError:
            return {}
        items = [line for line in reply.splitlines()[1:] if not line.startswith(("$", "*"))]
        return dict(zip(items[::2], items[1::2], strict=False))

    def knows(self, *, sentinels: int, replicas: int) -> bool:
        """Whether this sentinel sees `sentinels` others and `replicas` replicas."""
        state = self.state()
        return (
            int(state.get("num-other-sentinels", 0)) >= sentinels
            and int(state.get("num-slaves", 0)) >= replicas
        )

    def primary_port(self) -> int | None:
        """The port of the primary this sentinel names now (None: it does not answer)."""
        try:
            reply = redis_command(
                self.host, self.port, "SENTINEL", "get-master-addr-by-name", self.primary_name
            )
        except OSError:
            return None
        numbers = [line for line in reply.splitlines() if line.isdigit()]
        return int(numbers[-1]) if numbers else None

    @staticmethod
    def url_of(sentinels: list[SentinelProcess]) -> str:
        hosts = ",".join(f"{s.host}:{s.port}" for s in sentinels)
        return f"redis+sentinel://{hosts}/{sentinels[0].primary_name}"
