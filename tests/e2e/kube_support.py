"""Helpers shared by the e2e tests (a module of its own so that tests can import
them without importing a conftest)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

import qsys_testkit as testkit

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


def tool_dir(group: str) -> Path:
    """Bin directory of a pinned tool group (hack/tools/GROUP)."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "tools" / "build.sh"), "--dir", group],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


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
