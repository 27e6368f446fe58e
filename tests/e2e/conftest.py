"""Fixtures for end-to-end tests against a real Kubernetes API server.

With KUBECONFIG set, that cluster is used (kind or any other). Otherwise the local
control planes of hack/cluster are brought up once per session, each when its first test
runs, and taken down at the end by the last session using them if a test session
started them (LocalCluster.join, leave): the main one for the tests
on the real node (which starts only when the first test that requests `real_node` runs),
and the `kwok` plane, on kwok's fake nodes only, for the others (QSYS_KWOK_PLANE=0: they
share the main one). Under `make test` the kwok-only files run on one xdist worker and
the real-node ones in three lanes on three more, sharing the node (tests/conftest.py). No
cluster means failed tests, never skipped ones.

QSYS_KUBE_GROUP=kube-floor: the session runs against the oldest supported Kubernetes
minor instead (hack/tools/kube-floor; the `floor` plane, no real node, KUBECONFIG
ignored); `make test` runs the tests marked `floor` that way after the main run
(docs/testing.md "The Kubernetes floor").
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from node_support import require_real_node

from qsys_testkit.cluster import Cluster, ClusterError, LocalCluster, kwok_plane_enabled

FLOOR_MINOR = "1.31"
FLOOR = os.environ.get("QSYS_KUBE_GROUP", "kube") == "kube-floor"
# The real node starts later (`real_node`), unless QSYS_REAL_NODE says otherwise.
MAIN = (
    LocalCluster(plane="floor")
    if FLOOR
    else LocalCluster({"QSYS_REAL_NODE": os.environ.get("QSYS_REAL_NODE", "lazy")})
)
KWOK = LocalCluster(plane="kwok")


def _join_local(local: LocalCluster) -> None:
    """Start a local control plane unless it runs, as one of its users."""
    try:
        local.join()
    except ClusterError as exc:
        pytest.fail(
            f"no Kubernetes cluster: KUBECONFIG is not set and the local control plane "
            f"({local.plane}) did not start (build it with `make cluster-tools`, or set "
            f"KUBECONFIG).\n{exc}",
            pytrace=False,
        )


def _session_cluster(local: LocalCluster, given: str) -> Iterator[Cluster]:
    """The cluster of kubeconfig given, else local's: started unless it runs, and shared
    with the run's other workers (the real-node lanes); the last of them to end stops
    it, even after failures, when a test process started it (LocalCluster.leave)."""
    kubeconfig, joined = given, False
    if not kubeconfig:
        _join_local(local)
        joined = True
        kubeconfig = str(local.kubeconfig)
    try:
        try:
            api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            version = client.VersionApi(api).get_code(_request_timeout=10)
        except Exception as exc:
            pytest.fail(f"no Kubernetes cluster: {kubeconfig} is unusable: {exc}", pytrace=False)
        is_local = local.kubeconfig.exists() and os.path.samefile(kubeconfig, local.kubeconfig)
        if FLOOR and f"{version.major}.{version.minor}" != FLOOR_MINOR:
            pytest.fail(f"the floor run found Kubernetes {version.git_version}, not {FLOOR_MINOR}")
        yield Cluster(kubeconfig=kubeconfig, api=api, local=is_local)
        api.close()
    finally:
        if joined:
            local.leave()


@pytest.fixture(scope="session")
def main_cluster() -> Iterator[Cluster]:
    """KUBECONFIG's cluster, else the main local control plane (the floor's in the floor
    run)."""
    yield from _session_cluster(MAIN, "" if FLOOR else os.environ.get("KUBECONFIG", ""))


@pytest.fixture(scope="session")
def kwok_cluster() -> Iterator[Cluster]:
    """The `kwok` plane: kwok's fake nodes only, on its own ports and state directory."""
    yield from _session_cluster(KWOK, "")


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Cluster:
    """The cluster of this test file: the `kwok` plane when none of its tests uses the
    real node (and kwok_plane_enabled), else main_cluster. A file's tests all use the real
    node or none does (its module fixtures hold one cluster)."""
    uses = {
        "real_node" in getattr(item, "fixturenames", ())
        for item in request.session.items
        if item.path == request.path
    }
    if len(uses) > 1:
        pytest.fail(
            f"{request.path.name}: some of its tests use the real node and some do not; "
            "split the file (each file runs against one cluster)",
            pytrace=False,
        )
    if kwok_plane_enabled() and uses == {False}:
        return request.getfixturevalue("kwok_cluster")  # type: ignore[no-any-return]
    return request.getfixturevalue("main_cluster")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def real_node(main_cluster: Cluster) -> client.V1Node:
    """The local cluster's real node, Ready, started on first use (`node.sh ensure-up`
    reuses a running one); stopped with the cluster. On another cluster (kind): a Ready node
    labelled as running real pods (node_support.NODE_SELECTOR) must exist."""
    if main_cluster.local:
        try:
            MAIN.ensure_real_node()
        except ClusterError as exc:
            pytest.fail(f"the real node did not start: {exc}", pytrace=False)
    return require_real_node(main_cluster)


@pytest.fixture(scope="session")
def metrics_api(real_node: client.V1Node, main_cluster: Cluster) -> None:
    """The resource metrics API on the local cluster's real node: metrics-server, added
    when the node started before its tool group was built (`node.sh metrics-server`).
    Another cluster brings its own or has none (kind: the tests that need it are marked
    local_cluster)."""
    if main_cluster.local:
        try:
            MAIN.ensure_metrics_server()
        except ClusterError as exc:
            pytest.fail(f"metrics-server did not start on the real node: {exc}", pytrace=False)


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
