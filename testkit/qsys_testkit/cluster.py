"""A Kubernetes cluster for the repository's e2e tests, benchmarks and demo: the local one
of hack/cluster (control plane, kwok's fake nodes, the real node), started and stopped
through its scripts, or any other that $KUBECONFIG names; and `Cluster`, the handle the
tests hold on either, with the small API helpers they share. Needs a checkout of the
repository (its scripts and pinned tools)."""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .checkout import REPO, pinned_tool
from .net import wait_for as _wait_for

SCRIPTS = REPO / "hack" / "cluster"
SCRIPT_TIMEOUT_S = 240.0
API_WAIT_S = 120.0
"""The default bound of `wait_for` here: the API server (and the real node) can be slow."""

T = TypeVar("T")


class ClusterError(RuntimeError):
    """A hack/cluster script failed or took too long; the message ends with its stderr."""


MAIN_PLANE = "main"
PLANES = (MAIN_PLANE, "kwok", "floor")
"""The local control planes (hack/cluster/lib.sh, QSYS_CLUSTER_PLANE): the main one, the
only one with the real node, and beside it ones on kwok's fake nodes only, each with its
own state directory (.cache/cluster-PLANE), loopback ports and kwok pod addresses: `kwok`
for the e2e tests that never use the real node, `floor` for the oldest supported
Kubernetes minor (docs/testing.md)."""


def kwok_plane_enabled() -> bool:
    """Whether this session runs the e2e tests on kwok's fake nodes only against the `kwok`
    plane, beside the others on the main one: unless QSYS_KWOK_PLANE=0, KUBECONFIG names
    a cluster (every test runs there) or the session runs against the floor (its own
    plane, QSYS_KUBE_GROUP=kube-floor)."""
    return not (
        os.environ.get("QSYS_KWOK_PLANE", "1") == "0"
        or os.environ.get("KUBECONFIG")
        or os.environ.get("QSYS_KUBE_GROUP", "kube") != "kube"
    )


@dataclass(frozen=True)
class LocalCluster:
    """A local control plane, driven by hack/cluster's scripts: plane (PLANES) and env
    (QSYS_* variables: ports, QSYS_REAL_NODE; docs/testing.md) go on top of this process's
    environment. Whoever's `up` started it stops it; `up` reuses a running one. A plane
    other than the main one never has the real node, and takes its state directory and
    ports from hack/cluster/lib.sh alone."""

    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = SCRIPT_TIMEOUT_S
    scripts: Path = SCRIPTS
    plane: str = MAIN_PLANE

    def __post_init__(self) -> None:
        if self.plane not in PLANES:
            raise ValueError(f"no plane {self.plane!r}: one of {', '.join(PLANES)}")

    @property
    def state_dir(self) -> Path:
        if self.plane != MAIN_PLANE:
            return REPO / ".cache" / f"cluster-{self.plane}"
        value = self.env.get("QSYS_CLUSTER_DIR") or os.environ.get("QSYS_CLUSTER_DIR")
        return Path(value) if value else REPO / ".cache" / "cluster"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def owner_file(self) -> Path:
        """While a pytest session's cluster runs: that session's pid (tests/conftest.py
        stops a cluster whose session died)."""
        return self.state_dir / "started-by-pytest"

    def script(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """hack/cluster/NAME ARGS, its output captured; raises TimeoutExpired."""
        return subprocess.run(  # noqa: S603 - this repository's scripts
            ["bash", str(self.scripts / name), *args],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=self.timeout,
            check=False,
            cwd=REPO,
            env={**os.environ, **self.env, "QSYS_CLUSTER_PLANE": self.plane},
        )

    def _checked(self, name: str, *args: str) -> str:
        what = " ".join((f"hack/cluster/{name}", *args))
        try:
            result = self.script(name, *args)
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{what} took over {self.timeout:.0f}s") from exc
        if result.returncode != 0:
            raise ClusterError(f"{what} exited {result.returncode}:\n{result.stderr[-4000:]}")
        return result.stdout

    def up(self) -> bool:
        """Start the cluster unless it runs: True when this call started it. Interrupted
        (a timeout, Ctrl-C), it stops what it had started before raising."""
        try:
            return self._checked("up.sh").strip() == "started"
        except ClusterError as exc:
            if isinstance(exc.__cause__, subprocess.TimeoutExpired):
                self.down(check=False)
            raise
        except BaseException:
            self.down(check=False)
            raise

    def down(self, check: bool = True) -> None:
        """Stop the cluster and everything it started (the real node too)."""
        try:
            self._checked("down.sh")
        except ClusterError:
            if check:
                raise
        self.owner_file.unlink(missing_ok=True)

    def ensure_real_node(self) -> None:
        """Start the real node unless it runs (a cluster started with QSYS_REAL_NODE=lazy)."""
        with self._locked():
            self._checked("node.sh", "ensure-up")

    def ensure_metrics_server(self) -> None:
        """metrics-server on the running real node, unless it serves the metrics API
        already (the node starts without it when its group was not built yet)."""
        with self._locked():
            self._checked("node.sh", "metrics-server")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Starting, joining, leaving and stopping the plane, one process at a time (two
        xdist workers share the main plane, tests/e2e/conftest.py)."""
        path = self.state_dir.with_name(f"{self.state_dir.name}.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            yield

    @property
    def share_dir(self) -> Path:
        """Where the processes using the real node hold it (qsys_testkit.nodeshare)."""
        return self.state_dir.with_name(f"{self.state_dir.name}.share")

    @property
    def users_dir(self) -> Path:
        """One file per process using the plane (join), named after its pid."""
        return self.state_dir.with_name(f"{self.state_dir.name}.users")

    def join(self) -> bool:
        """Start the plane unless it runs and count this process among its users: True
        when this call started it (its pid goes to owner_file)."""
        with self._locked():
            started = self.up()
            if started:
                self.owner_file.parent.mkdir(parents=True, exist_ok=True)
                self.owner_file.write_text(str(os.getpid()))
            self.users_dir.mkdir(parents=True, exist_ok=True)
            (self.users_dir / str(os.getpid())).touch()
            return started

    def leave(self) -> bool:
        """This process no longer uses the plane. The last user (dead ones do not count)
        stops it when a test process started it (owner_file): True when this call did."""
        with self._locked():
            (self.users_dir / str(os.getpid())).unlink(missing_ok=True)
            users = list(self.users_dir.iterdir()) if self.users_dir.is_dir() else []
            alive = [user for user in users if Path(f"/proc/{user.name}").exists()]
            for user in set(users) - set(alive):
                user.unlink(missing_ok=True)
            if alive or not self.owner_file.exists():
                return False
            self.down()
            return True

    def import_images(self) -> None:
        """Import the tarballs of `make images` into the real node (those that changed)."""
        self._checked("node.sh", "import-images")

    @contextmanager
    def running(self, keep: bool = False) -> Iterator[bool]:
        """The cluster up for the block (True when this started it), stopped afterwards if
        this started it and not keep."""
        started = self.up()
        try:
            yield started
        finally:
            if started and not keep:
                self.down()


@contextmanager
def any_cluster(keep: bool = False) -> Iterator[str]:
    """A kubeconfig path: $KUBECONFIG when set (that cluster is never started or stopped),
    else the local cluster's, started when not running and stopped at the end if this
    started it (unless keep)."""
    given = os.environ.get("KUBECONFIG", "")
    if given:
        yield given
        return
    local = LocalCluster()
    with local.running(keep):
        yield str(local.kubeconfig)


@dataclass(frozen=True)
class Cluster:
    """The cluster a test session runs on."""

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


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = API_WAIT_S) -> T:
    """The kit's `wait_for` with the bound for API objects (API_WAIT_S)."""
    return _wait_for(what, probe, timeout)


def must(value: T | None) -> T:
    """value, which the API schema marks optional but the server always sets."""
    assert value is not None
    return value


def api_error(call: Callable[..., object], *args: object, **kwargs: object) -> ApiException:
    """The ApiException that call raises (the test fails when it raises none)."""
    import pytest

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


def can_i(kubeconfig: Path, *args: str) -> bool:
    """`kubectl auth can-i` (pinned kubectl) as the kubeconfig's identity: yes or no."""
    kubectl = pinned_tool("kube", "kubectl")
    result = subprocess.run(  # noqa: S603 - the pinned kubectl
        [str(kubectl), "--kubeconfig", str(kubeconfig), "auth", "can-i", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    assert result.stdout.strip() in ("yes", "no"), result.stdout + result.stderr
    return result.returncode == 0


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
