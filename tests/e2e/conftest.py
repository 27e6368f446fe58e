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
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from node_support import require_real_node

from qsys_testkit.checkout import REPO
from qsys_testkit.cluster import Cluster, ClusterError, LocalCluster

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
# The real node starts later (`real_node`), unless QSYS_REAL_NODE says otherwise.
LOCAL = LocalCluster(
    FLOOR_ENV if FLOOR else {"QSYS_REAL_NODE": os.environ.get("QSYS_REAL_NODE", "lazy")}
)


def _start_local() -> bool:
    """Start the local control plane; True when this call started it."""
    try:
        started = LOCAL.up()
    except ClusterError as exc:
        pytest.fail(
            "no Kubernetes cluster: KUBECONFIG is not set and the local control plane "
            "did not start (build it with `make cluster-tools`, or set KUBECONFIG).\n"
            f"{exc}",
            pytrace=False,
        )
    if started:
        LOCAL.owner_file.write_text(str(os.getpid()))
    return started


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    kubeconfig = "" if FLOOR else os.environ.get("KUBECONFIG", "")
    started = False
    if not kubeconfig:
        started = _start_local()
        kubeconfig = str(LOCAL.kubeconfig)
    try:
        try:
            api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            version = client.VersionApi(api).get_code(_request_timeout=10)
        except Exception as exc:
            pytest.fail(f"no Kubernetes cluster: {kubeconfig} is unusable: {exc}", pytrace=False)
        local = (
            os.path.samefile(kubeconfig, LOCAL.kubeconfig) if LOCAL.kubeconfig.exists() else False
        )
        if FLOOR and f"{version.major}.{version.minor}" != FLOOR_MINOR:
            pytest.fail(f"the floor run found Kubernetes {version.git_version}, not {FLOOR_MINOR}")
        yield Cluster(kubeconfig=kubeconfig, api=api, local=local)
        api.close()
    finally:
        if started:
            LOCAL.down()


@pytest.fixture(scope="session")
def real_node(cluster: Cluster) -> client.V1Node:
    """The local cluster's real node, Ready, started on first use (`node.sh ensure-up`
    reuses a running one); stopped with the cluster. On another cluster (kind): a Ready node
    labelled as running real pods (node_support.NODE_SELECTOR) must exist."""
    if cluster.local:
        try:
            LOCAL.ensure_real_node()
        except ClusterError as exc:
            pytest.fail(f"the real node did not start: {exc}", pytrace=False)
    return require_real_node(cluster)


@pytest.fixture(autouse=True)
def _local_cluster_only(request: pytest.FixtureRequest) -> None:
    """A test marked `local_cluster` (kwok's fake nodes, the real node's containerd or
    node.sh) fails at once on another cluster, saying so; `make e2e-kind` deselects it."""
    if request.node.get_closest_marker("local_cluster") is None:
        return
    cluster: Cluster = request.getfixturevalue("cluster")
    if not cluster.local:
        pytest.fail(
            f"{request.node.name} needs the local cluster (marked local_cluster), not "
            f"{cluster.kubeconfig}: deselect it with -m 'not local_cluster'",
            pytrace=False,
        )


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
