"""Fixtures for end-to-end tests against a real Kubernetes API server.

With KUBECONFIG set, that cluster is used (kind or any other). Otherwise the
local control plane of hack/cluster is brought up once per session, and taken
down at the end if this session started it. Its real node starts only when the
first test that requests `real_node` runs, so that the tests on kwok's fake
nodes never wait for it. No cluster means failed tests, never skipped ones.

QSYS_KUBE_GROUP=kube-floor: the session runs against the oldest supported
Kubernetes minor instead (hack/tools/kube-floor; its own state directory and
ports, no real node, KUBECONFIG ignored); `make test` runs the tests marked
`floor` that way after the main run (docs/testing.md "The Kubernetes floor").
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_support import REPO, Cluster
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from node_support import require_real_node

UP = REPO / "hack" / "cluster" / "up.sh"
DOWN = REPO / "hack" / "cluster" / "down.sh"
NODE = REPO / "hack" / "cluster" / "node.sh"
UP_TIMEOUT_S = 240
FLOOR_MINOR = "1.31"
FLOOR = os.environ.get("QSYS_KUBE_GROUP", "kube") == "kube-floor"
# The floor control plane beside (never instead of) the main one: other state and ports.
FLOOR_ENV = {
    "QSYS_REAL_NODE": "0",
    "QSYS_CLUSTER_DIR": str(REPO / ".cache" / "cluster-floor"),
    "QSYS_ETCD_PORT": "12479",
    "QSYS_ETCD_PEER_PORT": "12480",
    "QSYS_APISERVER_PORT": "16543",
    "QSYS_CONTROLLER_MANAGER_PORT": "16544",
    "QSYS_SCHEDULER_PORT": "16545",
    "QSYS_KWOK_PORT": "16546",
    "QSYS_KUBELET_HEALTHZ_PORT": "16548",
    "QSYS_KUBE_PROXY_HEALTHZ_PORT": "16549",
    "QSYS_KUBE_PROXY_METRICS_PORT": "16550",
}
LOCAL_KUBECONFIG = (
    Path(FLOOR_ENV["QSYS_CLUSTER_DIR"]) if FLOOR else REPO / ".cache" / "cluster"
) / "kubeconfig"
OWNER = LOCAL_KUBECONFIG.parent / "started-by-pytest"  # tests/conftest.py reads it


def _run_script(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The real node starts later (`real_node`), unless QSYS_REAL_NODE says otherwise.
    env = {**os.environ, "QSYS_REAL_NODE": os.environ.get("QSYS_REAL_NODE", "lazy")}
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT_S,
        check=False,
        cwd=REPO,
        env={**env, **FLOOR_ENV} if FLOOR else env,
    )


def _stop_local() -> None:
    result = _run_script(DOWN)
    if result.returncode != 0:
        raise RuntimeError(f"hack/cluster/down.sh failed:\n{result.stderr}")
    OWNER.unlink(missing_ok=True)


def _start_local() -> bool:
    """Start the local control plane; True when this call started it."""
    try:
        result = _run_script(UP)
    except subprocess.TimeoutExpired:
        _stop_local()
        pytest.fail(f"no Kubernetes cluster: hack/cluster/up.sh took over {UP_TIMEOUT_S}s")
    if result.returncode != 0:
        pytest.fail(
            "no Kubernetes cluster: KUBECONFIG is not set and the local control plane "
            "did not start (build it with `make cluster-tools`, or set KUBECONFIG).\n"
            f"hack/cluster/up.sh said:\n{result.stderr[-4000:]}",
            pytrace=False,
        )
    started = result.stdout.strip() == "started"
    if started:
        OWNER.write_text(str(os.getpid()))
    return started


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    kubeconfig = "" if FLOOR else os.environ.get("KUBECONFIG", "")
    started = False
    if not kubeconfig:
        try:
            started = _start_local()
        except BaseException:  # a timeout or Ctrl-C in the middle of up.sh
            _stop_local()
            raise
        kubeconfig = str(LOCAL_KUBECONFIG)
    try:
        try:
            api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            version = client.VersionApi(api).get_code(_request_timeout=10)
        except Exception as exc:
            pytest.fail(f"no Kubernetes cluster: {kubeconfig} is unusable: {exc}", pytrace=False)
        local = (
            os.path.samefile(kubeconfig, LOCAL_KUBECONFIG) if LOCAL_KUBECONFIG.exists() else False
        )
        if FLOOR and f"{version.major}.{version.minor}" != FLOOR_MINOR:
            pytest.fail(f"the floor run found Kubernetes {version.git_version}, not {FLOOR_MINOR}")
        yield Cluster(kubeconfig=kubeconfig, api=api, local=local)
        api.close()
    finally:
        if started:
            _stop_local()


@pytest.fixture(scope="session")
def real_node(cluster: Cluster) -> client.V1Node:
    """The local cluster's real node, Ready, started on first use (`node.sh ensure-up`
    reuses a running one); stopped with the cluster. On another cluster (kind): a Ready node
    labelled as running real pods (node_support.NODE_SELECTOR) must exist."""
    if cluster.local:
        try:
            result = _run_script(NODE, "ensure-up")
        except subprocess.TimeoutExpired:
            pytest.fail(f"the real node did not start within {UP_TIMEOUT_S}s", pytrace=False)
        if result.returncode != 0:
            pytest.fail(
                f"the real node did not start: hack/cluster/node.sh ensure-up said:\n"
                f"{result.stderr[-4000:]}",
                pytrace=False,
            )
    return require_real_node(cluster)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(cluster.api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In the floor run, only the tests marked `floor` (the others need the real node or
    the newest minor); they are deselected, never skipped."""
    if not FLOOR:
        return
    keep = [item for item in items if item.get_closest_marker("floor")]
    dropped = [item for item in items if not item.get_closest_marker("floor")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
