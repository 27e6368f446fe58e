"""The gateway (`qsys-gateway`) in a subprocess, and the config it reads."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import ssl
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Self

import yaml

from qsys_protocol.config import token_hmac

from .net import LOOPBACK, free_port, http_get, wait_for
from .process import ManagedProcess, executable

Readiness = Literal["readyz", "healthz"] | None


def token_sha256(token: str) -> str:
    """`subjects[].tokenSha256` of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def subject(
    name: str,
    token: str,
    rules: list[dict[str, Any]] | None = None,
    *,
    methods: list[str] | None = None,
    key: bytes | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One `subjects[]` entry: `rules`, or a single rule allowing `methods`. With `key`, the
    token is stored as the operator renders it (`tokenHmacSha256`; give the gateway the same
    `token_key`), else as the older unkeyed `tokenSha256`."""
    if rules is None:
        rules = [{"methods": methods}] if methods is not None else []
    if key is not None:
        hashed = {"tokenHmacSha256": token_hmac(key, token)}
    else:
        hashed = {"tokenSha256": token_sha256(token)}
    return {"name": name, **hashed, **extra, "rules": rules}


def gateway_config(
    core_port: int,
    subjects: Iterable[dict[str, Any]],
    *,
    core_host: str = LOOPBACK,
    host: str = LOOPBACK,
    max_clients: int = 50,
    requests_per_second: float = 500,
    burst: int = 1000,
    request_timeout: float = 3,
) -> dict[str, Any]:
    """A gateway config listening on free ports of `host` (HTTP, raw QRC, metrics), with
    in-memory rate limits and the audit trail on stdout; change the dict for the rest."""
    return {
        "core": {"host": core_host, "port": core_port, "requestTimeoutSeconds": request_timeout},
        "listen": {
            "host": host,
            "http": free_port(host),
            "qrc": free_port(host),
            "metrics": free_port(host),
        },
        "limits": {
            "maxClients": max_clients,
            "rate": {"requestsPerSecond": requests_per_second, "burst": burst},
            "storage": "memory",
        },
        "audit": {"logReads": False, "path": "-"},
        "subjects": list(subjects),
    }


class GatewayProcess(ManagedProcess):
    """`qsys-gateway --config DIR/gateway.yaml`, its audit trail (stdout) in
    DIR/gateway.stdout and its JSON logs (stderr) in DIR/gateway.stderr.

    `directory` None: a temporary one, removed when the `with` block ends. `ready`: what
    `start()` waits for: "readyz" (every listener up), "healthz" (also connected to the
    Core) or None (nothing: for a caller whose event loop must keep running). `token_key`:
    written to DIR/token-key and named in `auth.tokenKeyFile` (for keyed subjects). `env`:
    variables added to this process's environment (e.g. OTEL_*). `command`: what starts
    the gateway (default: the `qsys-gateway` of this environment), e.g. another
    interpreter's `python -m qsys_gateway.cli`.
    """

    name = "qsys-gateway"
    stop_timeout = 30.0

    def __init__(
        self,
        config: dict[str, Any],
        directory: Path | None = None,
        *,
        ready: Readiness = "readyz",
        args: Iterable[str] = (),
        token_key: bytes | None = None,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self._own_dir = directory is None
        self.dir = (
            Path(tempfile.mkdtemp(prefix="qsys-gateway-")) if directory is None else directory
        )
        self.config = copy.deepcopy(config)
        self.ready = ready
        self.args = list(args)
        self.env = dict(env or {})
        self.command = list(command) if command else None
        self.config_path = self.dir / "gateway.yaml"
        self.stdout_path = self.dir / "gateway.stdout"
        self.stderr_path = self.dir / "gateway.stderr"
        self.token_key_file: Path | None = None
        if token_key is not None:
            self.token_key_file = self.dir / "token-key"
            self.token_key_file.touch(0o600)
            self.token_key_file.write_bytes(token_key)
        self.write_config(self.config)

    def write_config(self, config: dict[str, Any] | str) -> None:
        """Replace the config file at once (a running gateway reloads it); a dict gets the
        `token_key` file in `auth.tokenKeyFile`."""
        if isinstance(config, dict) and self.token_key_file is not None:
            auth = {**(config.get("auth") or {}), "tokenKeyFile": str(self.token_key_file)}
            config = {**config, "auth": auth}
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text, "utf-8")
        os.replace(tmp, self.config_path)

    # -- addresses -------------------------------------------------------------------
    @property
    def host(self) -> str:
        return str(self.config["listen"].get("host", LOOPBACK))

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
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.http_port}/v1/ws"

    # -- process ---------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> Self:
        command = self.command or [executable("qsys-gateway")]
        argv = [*command, "--config", str(self.config_path), *self.args]
        self._launch(argv, self.stdout_path, self.stderr_path, env={**os.environ, **self.env})
        if self.ready is not None:
            self.wait_ready(timeout, self.ready)
        return self

    def wait_ready(self, timeout: float = 20.0, probe: Readiness = "readyz") -> None:
        context = None
        if self.tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE

        def answered() -> bool:
            got = http_get(f"{self.url}/{probe}", context=context)
            if got is None or got[0] != 200:
                return False
            return probe != "healthz" or json.loads(got[1]).get("status") == "healthy"

        self.wait_until(f"/{probe}", answered, timeout)

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    # -- output ----------------------------------------------------------------------
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.output()

    def audit_lines(self) -> list[dict[str, Any]]:
        lines = (json.loads(line) for line in self.stdout().splitlines() if line.strip())
        return [obj for obj in lines if obj.get("type") == "audit"]

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr().splitlines() if line.strip()]

    def metrics_text(self) -> str:
        got = http_get(f"http://{self.host}:{self.metrics_port}/metrics", timeout=5)
        if got is None or got[0] != 200:
            raise RuntimeError(f"{self.name}: /metrics answered {got}")
        return got[1].decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def wait_metric(self, name: str, value: float, timeout: float = 30.0, **labels: str) -> float:
        """Wait until `metric(name, **labels)` reaches `value`; the sum it reached."""

        def reached() -> float | None:
            got = self.metric(name, **labels)
            return got if got >= value else None

        return self.wait_until(f"{name}{labels or ''} >= {value}", reached, timeout)

    def rpc(self, token: str, method: str, params: Any = None) -> tuple[int, dict[str, Any]]:
        """One JSON-RPC call over HTTP (POST /v1/rpc): (HTTP status, decoded body)."""
        return rpc(self.url, token, method, params)


def rpc(url: str, token: str, method: str, params: Any = None) -> tuple[int, dict[str, Any]]:
    """One JSON-RPC call to the gateway at `url` (POST /v1/rpc, bearer token):
    (HTTP status, decoded body)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        body["params"] = params
    req = urllib.request.Request(  # noqa: S310 - the gateway's own address
        f"{url}/v1/rpc",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_accepted(url: str, token: str, timeout: float = 150.0, streak: int = 10) -> None:
    """Until the gateway behind `url` answers `StatusGet` with `token` `streak` times in a
    row (its subject's rules must allow StatusGet). An AccessPolicy is Ready once it is
    rendered; each gateway pod takes it up when the kubelet next syncs the pod's config
    Secret (up to a minute or more), and a Service spreads calls over pods that may not
    have it yet. A refused or unanswered call starts the count again."""
    run = 0

    def accepted() -> bool:
        nonlocal run
        try:
            ok = rpc(url, token, "StatusGet")[0] == 200
        except (OSError, ValueError):
            ok = False
        run = run + 1 if ok else 0
        return run >= streak

    wait_for(f"the token accepted by the gateway at {url}", accepted, timeout, interval=0.1)
