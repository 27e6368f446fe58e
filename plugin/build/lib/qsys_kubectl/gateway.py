"""Reaching a gateway from the user's machine: `kubectl port-forward` on loopback, one call.

The port-forward is a `kubectl` subprocess (the same binary that runs the plugin),
bound to 127.0.0.1 on a port the kernel picks, stopped when the call is done.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from .cluster import Target
from .views import PluginError

FORWARD_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 30.0
_FORWARDING = re.compile(rb"Forwarding from 127\.0\.0\.1:(\d+) ->")


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        raise PluginError("kubectl not found on PATH (needed for the port-forward)")
    return found


@contextlib.contextmanager
def port_forward(target: Target, namespace: str, resource: str, port: int) -> Iterator[int]:
    """Forward a local loopback port to `port` of `resource` (e.g. svc/room-gateway)."""
    argv = [_kubectl()]
    if target.kubeconfig:
        argv += ["--kubeconfig", target.kubeconfig]
    if target.context:
        argv += ["--context", target.context]
    argv += ["-n", namespace, "port-forward", "--address", "127.0.0.1", resource, f":{port}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603
    try:
        found: list[int] = []
        done = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                match = _FORWARDING.search(line)
                if match:
                    found.append(int(match.group(1)))
                    break
            done.set()

        threading.Thread(target=read, daemon=True).start()
        done.wait(FORWARD_TIMEOUT_S)
        if not found:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            detail = err.decode("utf-8", "replace").strip()[-500:] or "no output"
            raise PluginError(f"port-forward to {resource} failed: {detail}")
        yield found[0]
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def rpc(
    base_url: str,
    token: str,
    method: str,
    params: Any,
    ca_pem: str | None = None,
) -> dict[str, Any]:
    """One JSON-RPC call through `POST /v1/rpc`; the answer object (result or error)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    req = urllib.request.Request(  # noqa: S310 - the URL is built here, http(s) only
        f"{base_url}/v1/rpc",
        data=body.encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    context = None
    if ca_pem is not None:
        # Reached through a loopback forward: the name cannot match, the key must.
        context = ssl.create_default_context(cadata=ca_pem)
        context.check_hostname = False
    try:
        with urllib.request.urlopen(req, timeout=CALL_TIMEOUT_S, context=context) as r:  # noqa: S310
            answer = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read() or b"{}")
        except ValueError:
            answer = {}
        if not isinstance(answer, dict) or "error" not in answer:
            raise PluginError(f"gateway answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PluginError(f"gateway call failed: {exc}") from None
    if not isinstance(answer, dict):
        raise PluginError("gateway answered something that is not a JSON-RPC object")
    return answer
