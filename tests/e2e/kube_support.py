"""Helpers shared by the e2e tests (a module of its own so that tests can import
them without importing a conftest)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

import qsys_testkit as testkit
from qsys_testkit.checkout import pinned_tool as pinned_tool
from qsys_testkit.checkout import tool_dir as tool_dir

REPO = Path(__file__).resolve().parents[2]

T = TypeVar("T")


@dataclass(frozen=True)
class Cluster:
    kubeconfig: str
    """KUBECONFIG value for subprocesses (kubectl, helm, the operator)."""
    api: client.ApiClient
    local: bool
    """True for the local control plane (kwok nodes: pods never run)."""

    def configuration(self) -> client.Configuration:
        """A fresh copy of the admin client configuration."""
        cfg = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=self.kubeconfig, client_configuration=cfg
        )
        return cfg


def can_i(kubeconfig: Path, *args: str) -> bool:
    """`kubectl auth can-i` (pinned kubectl) as the kubeconfig's identity: yes or no."""
    kubectl = pinned_tool("kube", "kubectl")
    result = subprocess.run(
        [str(kubectl), "--kubeconfig", str(kubeconfig), "auth", "can-i", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    assert result.stdout.strip() in ("yes", "no"), result.stdout + result.stderr
    return result.returncode == 0


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120.0) -> T:
    """The test kit's `wait_for` with the e2e default bound (the API server can be slow)."""
    return testkit.wait_for(what, probe, timeout)


def must(value: T | None) -> T:
    """value, which the API schema marks optional but the server always sets."""
    assert value is not None
    return value


def api_error(call: Callable[..., object], *args: object, **kwargs: object) -> ApiException:
    """The ApiException that call raises."""
    with pytest.raises(ApiException) as info:
        call(*args, **kwargs)
    return info.value


def status_of(call: Callable[[], object]) -> int:
    """HTTP status of call: 200 when it succeeds, the error's status otherwise."""
    try:
        call()
    except ApiException as exc:
        return int(exc.status or 0)
    return 200


def wait_gone(what: str, read: Callable[[], object], timeout: float = 120.0) -> None:
    """Until read() answers 404 (any other API error is raised)."""

    def gone() -> bool:
        try:
            read()
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    wait_for(f"{what} deleted", gone, timeout=timeout)


def token_kubeconfig(cluster: Cluster, account: str, namespace: str, path: Path) -> Path:
    """A kubeconfig at path holding a TokenRequest token of a ServiceAccount."""
    request = client.CoreV1Api(cluster.api).create_namespaced_service_account_token(
        account,
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        ),
    )
    token = must(must(request.status).token)
    cfg = cluster.configuration()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": cfg.host, "certificate-authority": cfg.ssl_ca_cert},
                    }
                ],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
                "current-context": "sa",
            }
        )
    )
    path.chmod(0o600)
    return path
