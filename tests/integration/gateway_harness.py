"""Run the real `qsys-gateway` process against the simulator for integration tests.

The gateway runs as a subprocess with its stdout (audit) and stderr (JSON logs)
captured to files; every address is loopback and every process started here is
stopped by the fixture that started it, whether the test passed or not.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

LOOPBACK = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]

ADMIN_TOKEN = "adm-7f3c1e9a5b2d4c6e8f0a1b3c5d7e9f11"
PANEL_TOKEN = "pnl-2b4d6f8a0c1e3a5c7e9b1d3f5a7c9e22"
SLOW_TOKEN = "slw-9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c33"
NORULES_TOKEN = "nor-1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c44"
ALL_TOKENS = (ADMIN_TOKEN, PANEL_TOKEN, SLOW_TOKEN, NORULES_TOKEN)


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def base_config(core_port: int, core_host: str = LOOPBACK) -> dict[str, Any]:
    """A config with four subjects covering every rule dimension."""
    return {
        "core": {"host": core_host, "port": core_port, "requestTimeoutSeconds": 3},
        "listen": {
            "host": LOOPBACK,
            "http": free_port(),
            "qrc": free_port(),
            "metrics": free_port(),
        },
        "limits": {
            "maxClients": 50,
            "maxMessageBytes": 65536,
            "rate": {"requestsPerSecond": 500, "burst": 1000},
            "storage": "memory",
        },
        "audit": {"logReads": False, "path": "-"},
        "cors": {"allowedOrigins": ["https://panel.example"]},
        "subjects": [
            {
                "name": "admin",
                "tokenSha256": sha(ADMIN_TOKEN),
                "rules": [{"methods": ["*"]}, {"methods": ["Mixer.SetInputGain"]}],
            },
            {
                "name": "panel",
                "tokenSha256": sha(PANEL_TOKEN),
                "rules": [
                    {"methods": ["NoOp", "StatusGet", "ChangeGroup.*"]},
                    {
                        "methods": ["Component.Get", "Component.Set"],
                        "components": ["Room101 Zone*"],
                        "controls": ["gain", "mute"],
                        "valueRange": {"min": -60, "max": 0},
                    },
                    {"methods": ["Control.Get"], "components": ["*"], "controls": ["Lobby*"]},
                    {
                        "methods": ["ChangeGroup.AddComponentControl"],
                        "components": ["Room101 Zone*"],
                        "controls": ["gain", "mute"],
                    },
                    {"methods": ["Snapshot.Load"], "components": ["Room Presets"]},
                ],
            },
            {
                "name": "slow",
                "tokenSha256": sha(SLOW_TOKEN),
                "rate": {"requestsPerSecond": 2, "burst": 2},
                "rules": [{"methods": ["NoOp", "StatusGet", "Control.*"]}],
            },
            {"name": "norules", "tokenSha256": sha(NORULES_TOKEN), "rules": []},
        ],
    }


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway cert/key for 127.0.0.1 (cryptography when installed, else openssl)."""
    cert, key = directory / "tls.crt", directory / "tls.key"
    try:
        _cert_with_cryptography(cert, key)
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.fail("neither the cryptography package nor openssl is available for TLS tests")
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    return cert, key


def _cert_with_cryptography(cert_path: Path, key_path: Path) -> None:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def client_tls(cert: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    return ctx


class Gateway:
    """A `qsys-gateway` subprocess; `stop()` SIGTERMs it and returns the exit code."""

    def __init__(
        self, directory: Path, config: dict[str, Any], env: dict[str, str] | None = None
    ) -> None:
        self.dir = directory
        self.env = env or {}
        self.config = copy.deepcopy(config)
        self.config_path = directory / "gateway.yaml"
        self.stdout_path = directory / "gateway.stdout"
        self.stderr_path = directory / "gateway.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config(self.config)

    # -- config -------------------------------------------------------------
    def write_config(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    @property
    def tls(self) -> bool:
        return bool(self.config["listen"].get("tls"))

    @property
    def http_port(self) -> int:
        return int(self.config["listen"]["http"])

    @property
    def qrc_port(self) -> int:
        return int(self.config["listen"]["qrc"])

    @property
    def metrics_port(self) -> int:
        return int(self.config["listen"]["metrics"])

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{LOOPBACK}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://{LOOPBACK}:{self.http_port}/v1/ws"

    # -- process ------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> Gateway:
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "qsys-gateway"), "--config", str(self.config_path)],
                stdout=out,
                stderr=err,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gateway exited with {self.proc.returncode}: {self.stderr()[-2000:]}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/readyz", timeout=1, context=ctx) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"gateway not ready after {timeout}s: {self.stderr()[-2000:]}")

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    # -- output -------------------------------------------------------------
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def audit_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.stdout().splitlines():
            if line.strip():
                obj = json.loads(line)
                if obj.get("type") == "audit":
                    lines.append(obj)
        return lines

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr().splitlines() if line.strip()]

    def metrics_text(self) -> str:
        url = f"http://{LOOPBACK}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, rest = head.partition("{")
            if metric != name:
                continue
            got = dict(
                (k, v.strip('"'))
                for k, _, v in (p.partition("=") for p in _split_labels(rest.rstrip("}")))
            )
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(value)
        return total


def _split_labels(text: str) -> list[str]:
    out, cur, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


class SimProcess:
    """A `qsys-core-sim` subprocess (for faults that need a real kill)."""

    def __init__(self, port: int, host: str = LOOPBACK, *args: str) -> None:
        self.host = host
        self.port = port
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SimProcess:
        self.proc = subprocess.Popen(
            [
                str(VENV_BIN / "qsys-core-sim"),
                "--host",
                self.host,
                "--port",
                str(self.port),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"simulator exited with {self.proc.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                return self
            time.sleep(0.05)
        raise TimeoutError("simulator did not listen")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: the gateway rate-limit tests need it")
        self.binary = binary
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--bind",
                LOOPBACK,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), 0.2):
                return self
            time.sleep(0.05)
        raise TimeoutError("redis-server did not listen within 10 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test paused it
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def running_gateway(directory: Path, config: dict[str, Any]) -> Iterator[Gateway]:
    gw = Gateway(directory, config)
    try:
        yield gw.start()
    finally:
        gw.stop()


@contextlib.contextmanager
def running_sim(port: int | None = None, host: str = LOOPBACK, *args: str) -> Iterator[SimProcess]:
    sim = SimProcess(port or free_port(host), host, *args)
    try:
        yield sim.start()
    finally:
        sim.kill()


def assert_no_tokens(*texts: str) -> None:
    for text in texts:
        for token in ALL_TOKENS:
            assert token not in text, "a token leaked into gateway output"


GatewayFactory = Callable[..., Gateway]
"""`make_gateway(core_port, edit=None, *, start=True, core_host=...)` of conftest.py."""


def pinned_tool(group: str, name: str) -> Path:
    """A binary of hack/tools/GROUP from $QSYS_TOOLS_CACHE; fails (never skips) when not built."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "tools" / "build.sh"), "--dir", group],
        check=True,
        capture_output=True,
        text=True,
    )
    path = Path(out.stdout.strip()) / name
    if not path.is_file():
        pytest.fail(
            f"{name} is not built ({path} missing): run `make cluster-tools` "
            f"(or `bash hack/tools/build.sh {group}`)",
            pytrace=False,
        )
    return path
