"""Loopback ports and bounded polling."""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

LOOPBACK = "127.0.0.1"
T = TypeVar("T")


_RECENT = 4096
_recent: dict[int, None] = {}  # ports handed out, oldest first
_lock = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out as source ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` that nothing listens on right now, outside the kernel's
    ephemeral range, so that no client socket (of this test or another) takes it as its
    source port before the server binds it. Random start, checked by binding; never one
    this process was given recently (three free_port() calls give three ports)."""
    low, high = _ephemeral_range()
    candidates = range(20000, low) if low - 20000 >= 1000 else range(high + 1, 65536)
    with _lock:
        return _pick(host, candidates)


def _pick(host: str, candidates: range) -> int:
    start = random.randrange(len(candidates))
    for i in range(len(candidates)):
        port = candidates[(start + i) % len(candidates)]
        if port in _recent:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _recent[port] = None
        if len(_recent) > _RECENT:
            del _recent[next(iter(_recent))]
        return port
    raise OSError(f"no free port on {host} in {candidates.start}-{candidates.stop - 1}")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.25
) -> T:
    """Poll `probe` until it returns something other than None or False; its value.

    An exception from `probe` ends the wait (a process that died says so at once).
    """
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last is not None and last is not False:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})"
            )
        time.sleep(interval)


def port_open(port: int, host: str = LOOPBACK) -> bool:
    """True when something accepts TCP connections on `host:port`."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
        return True
    return False


def wait_for_port(port: int, timeout: float = 15.0, host: str = LOOPBACK) -> None:
    wait_for(f"{host}:{port} to listen", lambda: port_open(port, host), timeout, 0.05)


def http_get(
    url: str, timeout: float = 1.0, context: ssl.SSLContext | None = None
) -> tuple[int, bytes] | None:
    """(status, body) of a GET, any status included; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:  # noqa: S310
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return None


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    got = http_get(url, context=context)
    return got is not None and got[0] == 200
