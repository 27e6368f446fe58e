"""Fixtures for end-to-end tests against a real Kubernetes API server.

With KUBECONFIG set, that cluster is used (kind or any other). Otherwise the
local control plane of hack/cluster is brought up once per session, and taken
down at the end if this session started it. Its real node starts only when the
first test that requests `real_node` runs, so that the tests on kwok's fake
nodes never wait for it. No cluster means failed tests, never skipped ones.
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
LOCAL_KUBECONFIG = REPO / ".cache" / "cluster" / "kubeconfig"
OWNER = REPO / ".cache" / "cluster" / "started-by-pytest"  # tests/conftest.py reads it
UP_TIMEOUT_S = 240


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
        env=env,
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
    kubeconfig = os.environ.get("KUBECONFIG", "")
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
            client.VersionApi(api).get_code(_request_timeout=10)
        except Exception as exc:
            pytest.fail(f"no Kubernetes cluster: {kubeconfig} is unusable: {exc}", pytrace=False)
        local = (
            os.path.samefile(kubeconfig, LOCAL_KUBECONFIG) if LOCAL_KUBECONFIG.exists() else False
        )
        yield Cluster(kubeconfig=kubeconfig, api=api, local=local)
        api.close()
    finally:
        if started:
            _stop_local()


@pytest.fixture(scope="session")
def real_node(cluster: Cluster) -> client.V1Node:
    """The local cluster's real node, Ready, started on first use (`node.sh ensure-up`
    reuses a running one); stopped with the cluster. On another cluster: its node
    `qsys-node` must exist."""
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
