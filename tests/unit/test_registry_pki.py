"""The test kit registry's certificates (qsys_testkit.registry.make_pki): a TLS server on
loopback with the server certificate, verified by a client that trusts only the CA. A
registry named `localhost` (as the GitOps test names it, for Argo CD) must verify for
that name and for its address; nothing else."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from qsys_testkit import LOOPBACK
from qsys_testkit.registry import make_pki


@contextmanager
def tls_server(cert: Path, key: Path) -> Iterator[int]:
    """A loopback listener that completes TLS handshakes with cert until closed: its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server((LOOPBACK, 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def handshake(ca: Path, port: int, server_hostname: str) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((LOOPBACK, port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname=server_hostname),
    ):
        pass


def test_a_named_registry_certificate_holds_its_name_and_address(tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path, LOOPBACK, "localhost")
    with tls_server(cert, key) as port:
        handshake(ca, port, "localhost")
        handshake(ca, port, LOOPBACK)
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(ca, port, "registry.invalid")


def test_an_unnamed_registry_certificate_holds_its_address_only(tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path, LOOPBACK)
    with tls_server(cert, key) as port:
        handshake(ca, port, LOOPBACK)
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(ca, port, "localhost")


def test_another_ca_is_not_trusted(tmp_path: Path) -> None:
    _, cert, key = make_pki(tmp_path / "registry", LOOPBACK, "localhost")
    other_ca, _, _ = make_pki(tmp_path / "other", LOOPBACK, "localhost")
    with tls_server(cert, key) as port, pytest.raises(ssl.SSLCertVerificationError):
        handshake(other_ca, port, "localhost")
