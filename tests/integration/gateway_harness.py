"""What the gateway integration tests share beyond the test kit (qsys_testkit): the
subjects and tokens of `base_config`, a TLS certificate, the token-leak check.

The processes (GatewayProcess, SimulatorProcess, RedisProcess) are the kit's; every
address is loopback and every process is stopped by the fixture that started it.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qsys_testkit import LOOPBACK, GatewayProcess, gateway_config, subject
from qsys_testkit.checkout import pinned_tool as pinned_tool

REPO = Path(__file__).resolve().parents[2]

ADMIN_TOKEN = "adm-7f3c1e9a5b2d4c6e8f0a1b3c5d7e9f11"
PANEL_TOKEN = "pnl-2b4d6f8a0c1e3a5c7e9b1d3f5a7c9e22"
SLOW_TOKEN = "slw-9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c33"
NORULES_TOKEN = "nor-1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c44"
ALL_TOKENS = (ADMIN_TOKEN, PANEL_TOKEN, SLOW_TOKEN, NORULES_TOKEN)


def base_config(core_port: int, core_host: str = LOOPBACK) -> dict[str, Any]:
    """A config with four subjects covering every rule dimension."""
    panel_rules: list[dict[str, Any]] = [
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
    ]
    subjects = [
        subject("admin", ADMIN_TOKEN, [{"methods": ["*"]}, {"methods": ["Mixer.SetInputGain"]}]),
        subject("panel", PANEL_TOKEN, panel_rules),
        subject(
            "slow",
            SLOW_TOKEN,
            methods=["NoOp", "StatusGet", "Control.*"],
            rate={"requestsPerSecond": 2, "burst": 2},
        ),
        subject("norules", NORULES_TOKEN, []),
    ]
    config = gateway_config(core_port, subjects, core_host=core_host)
    config["limits"]["maxMessageBytes"] = 65536
    config["cors"] = {"allowedOrigins": ["https://panel.example"]}
    return config


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


def assert_no_tokens(*texts: str) -> None:
    for text in texts:
        for token in ALL_TOKENS:
            assert token not in text, "a token leaked into gateway output"


GatewayFactory = Callable[..., GatewayProcess]
"""`make_gateway(core_port, edit=None, *, start=True, core_host=...)` of conftest.py."""
