"""Loopback ports and bounded polling."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

LOOPBACK = "127.0.0.1"
T = TypeVar("T")


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


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
