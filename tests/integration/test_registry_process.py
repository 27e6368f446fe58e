"""The test kit's registry (qsys_testkit.registry, the pinned CNCF Distribution): reached
by its host name as a real registry is, TLS verified against its own CA for that name and
for its address, and basic auth required. The release and GitOps e2e tests push to it."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
from pathlib import Path

import pytest

from qsys_testkit import LOOPBACK
from qsys_testkit.registry import RegistryProcess

pytestmark = pytest.mark.tools("registry")


def v2_status(registry: RegistryProcess, host: str, auth: str | None = None) -> int:
    """The status of GET /v2/ at host:port, the TLS certificate verified for host."""
    conn = http.client.HTTPSConnection(
        host, registry.port, timeout=10, context=registry.ssl_context()
    )
    try:
        headers = {"Authorization": f"Basic {auth}"} if auth else {}
        conn.request("GET", "/v2/", headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_named_registry_serves_tls_for_its_name_and_address_with_basic_auth(
    tmp_path: Path,
) -> None:
    with RegistryProcess(tmp_path / "registry", host_name="localhost") as registry:
        assert registry.address == f"localhost:{registry.port}"
        assert registry.client_env()["SSL_CERT_FILE"] == str(registry.ca_file)
        account = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
        wrong = base64.b64encode(f"{registry.username}:not-the-password".encode()).decode()
        for host in ("localhost", LOOPBACK):
            assert v2_status(registry, host) == 401
            assert v2_status(registry, host, wrong) == 401
            assert v2_status(registry, host, account) == 200
        # A name its certificate does not hold is refused by the client's verification.
        with (
            socket.create_connection((LOOPBACK, registry.port), timeout=10) as sock,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            registry.ssl_context().wrap_socket(sock, server_hostname="registry.invalid")


def test_an_unnamed_registry_is_addressed_by_its_ip(tmp_path: Path) -> None:
    with RegistryProcess(tmp_path / "registry") as registry:
        assert registry.address == f"{LOOPBACK}:{registry.port}"
        assert v2_status(registry, LOOPBACK) == 401
        with (
            socket.create_connection((LOOPBACK, registry.port), timeout=10) as sock,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            registry.ssl_context().wrap_socket(sock, server_hostname="localhost")
