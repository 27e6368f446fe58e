"""A throwaway OCI registry on loopback: CNCF Distribution (the pinned `registry` tool
group) with TLS from its own CA and htpasswd basic auth, as a release is pushed to and
a cluster pulls from.

`RegistryProcess(workdir).start()` writes a CA, a server certificate for 127.0.0.1
(and `host_name`, a name of that address such as `localhost`, if given), an htpasswd
file with one random user, the registry's config and a Docker-style `config.json`
holding that user's credentials (for crane, cosign and helm: `client_env()`), then waits
until `/v2/` answers 401 over TLS.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import subprocess
from pathlib import Path
from typing import Self

import bcrypt

from .checkout import pinned_tool
from .net import LOOPBACK, free_port, http_get
from .process import ManagedProcess


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(  # noqa: S603 - fixed argv
        ["openssl", *args],  # noqa: S607
        check=True,
        capture_output=True,
        cwd=cwd,
    )


def make_pki(directory: Path, host: str, name: str | None = None) -> tuple[Path, Path, Path]:
    """(ca.crt, registry.crt, registry.key): an EC P-256 CA and a server certificate
    for HOST (an IP address) and NAME (a DNS name, if given), as hack/cluster/pki.sh
    makes the cluster's."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out")
    _openssl(*ec, "ca.key", cwd=directory)
    _openssl(
        *("req", "-x509", "-new", "-key", "ca.key", "-days", "2", "-subj"),
        "/CN=qsys-test-registry-ca",
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"),
        *("-out", "ca.crt"),
        cwd=directory,
    )
    _openssl(*ec, "registry.key", cwd=directory)
    _openssl(
        *("req", "-new", "-key", "registry.key", "-subj", "/CN=qsys-test-registry"),
        *("-out", "registry.csr"),
        cwd=directory,
    )
    alt_names = f"IP:{host}" + (f",DNS:{name}" if name else "")
    (directory / "registry.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={alt_names}\n"
    )
    _openssl(
        *("x509", "-req", "-in", "registry.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
        *("-set_serial", f"0x{secrets.token_hex(16)}", "-days", "2"),
        *("-extfile", "registry.ext", "-out", "registry.crt"),
        cwd=directory,
    )
    for name in ("ca.key", "registry.key"):
        (directory / name).chmod(0o600)
    return directory / "ca.crt", directory / "registry.crt", directory / "registry.key"


class RegistryProcess(ManagedProcess):
    """CNCF Distribution serving https://127.0.0.1:PORT with basic auth, storage in
    WORKDIR/storage. `username`/`password`: the one account of its htpasswd.

    host_name: a name of HOST (e.g. `localhost`) that clients use instead of the address,
    as they name a real registry; its certificate holds both. Argo CD, for one, does not
    take `IP:PORT/PATH` for an OCI Helm repository (Go's url.Parse refuses it)."""

    name = "registry"

    def __init__(self, workdir: Path, host: str = LOOPBACK, host_name: str | None = None) -> None:
        super().__init__()
        self.binary = pinned_tool("registry", "registry")
        self.workdir = workdir
        self.host = host
        self.host_name = host_name
        self.port = free_port(host)
        self.username = "release"
        self.password = secrets.token_urlsafe(24)
        self.ca_file = workdir / "pki" / "ca.crt"
        self.docker_config = workdir / "docker"

    @property
    def address(self) -> str:
        """host:port (host_name:port if given), as image references and containerd's hosts
        directory name it."""
        return f"{self.host_name or self.host}:{self.port}"

    def client_env(self) -> dict[str, str]:
        """Environment for crane, cosign and helm: trust the CA, use the credentials."""
        config = str(self.docker_config / "config.json")
        return {
            "SSL_CERT_FILE": str(self.ca_file),
            "DOCKER_CONFIG": str(self.docker_config),
            "HELM_REGISTRY_CONFIG": config,
        }

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def start(self, timeout: float = 20.0) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        _, cert, key = make_pki(self.workdir / "pki", self.host, self.host_name)
        htpasswd = self.workdir / "htpasswd"
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=10)).decode()
        htpasswd.write_text(f"{self.username}:{hashed}\n")
        htpasswd.chmod(0o600)
        self.docker_config.mkdir(exist_ok=True)
        auth = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        config = self.docker_config / "config.json"
        config.write_text(json.dumps({"auths": {self.address: {"auth": auth}}}))
        config.chmod(0o600)
        settings = {
            "version": "0.1",
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "storage")},
                "delete": {"enabled": True},
            },
            "http": {
                "addr": f"{self.host}:{self.port}",
                "tls": {"certificate": str(cert), "key": str(key)},
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
            "auth": {"htpasswd": {"realm": "qsys-test-registry", "path": str(htpasswd)}},
        }
        config_file = self.workdir / "config.yml"
        config_file.write_text(json.dumps(settings))  # YAML is a superset of JSON
        log = self.workdir / "registry.log"
        self._launch(
            [str(self.binary), "serve", str(config_file)],
            log,
            log,
            env={"OTEL_TRACES_EXPORTER": "none", "PATH": "/usr/bin:/bin"},
        )
        context = self.ssl_context()

        def answers() -> bool | None:
            got = http_get(f"https://{self.address}/v2/", context=context)
            return True if got is not None and got[0] == 401 else None

        self.wait_until("serving /v2/ with auth over TLS", answers, timeout)
        return self
