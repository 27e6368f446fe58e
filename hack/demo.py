"""`make demo`: a Core simulator, a gateway in front of it, one allowed and one denied call.

Everything listens on 127.0.0.1 and stops when the demo ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=1) as resp,  # noqa: S310 - loopback only
        ):
            if resp.status == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"demo: {url} did not come up")


def rpc(port: int, token: str, body: dict[str, object]) -> tuple[int, str]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/rpc",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="qsys-demo-"))
    core_port, http_port, qrc_port, metrics_port = (free_port() for _ in range(4))
    token = secrets.token_urlsafe(32)
    config = {
        "core": {"host": "127.0.0.1", "port": core_port},
        "listen": {
            "host": "127.0.0.1",
            "http": http_port,
            "qrc": qrc_port,
            "metrics": metrics_port,
        },
        "audit": {"path": str(work / "audit.log")},
        "subjects": [
            {
                "name": "room-101-panel",
                "tokenSha256": hashlib.sha256(token.encode()).hexdigest(),
                "rules": [
                    {"methods": ["Component.Get", "StatusGet"]},
                    {
                        "methods": ["Component.Set"],
                        "components": ["Room101*"],
                        "controls": ["gain", "mute"],
                        "valueRange": {"min": -60, "max": 0},
                    },
                ],
            }
        ],
    }
    (work / "gateway.yaml").write_text(json.dumps(config))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(work / "sim.log", "wb") as sim_log, open(work / "gateway.log", "wb") as gw_log:
            procs.append(
                subprocess.Popen(
                    [str(BIN / "qsys-core-sim"), "--port", str(core_port)],
                    stdout=sim_log,
                    stderr=subprocess.STDOUT,
                )
            )
            procs.append(
                subprocess.Popen(
                    [str(BIN / "qsys-gateway"), "--config", str(work / "gateway.yaml")],
                    stdout=gw_log,
                    stderr=subprocess.STDOUT,
                )
            )
        wait_http(f"http://127.0.0.1:{http_port}/readyz")
        print(f"Core simulator on 127.0.0.1:{core_port}; gateway on 127.0.0.1:{http_port}\n")
        allowed = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "Component.Set",
            "params": {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain", "Value": -12}]},
        }
        denied = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "Component.Set",
            "params": {"Name": "Auditorium Zone1 Gain", "Controls": [{"Name": "mute", "Value": 1}]},
        }
        for title, body in (("allowed", allowed), ("denied", denied)):
            status, text = rpc(http_port, token, body)
            print(f"{title}: room-101-panel -> {body['method']} {json.dumps(body['params'])}")
            print(f"  HTTP {status} {text}\n")
        print("audit trail:")
        print((work / "audit.log").read_text())
        return 0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
