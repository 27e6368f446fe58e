"""LocalCluster (qsys_testkit.cluster), the one face of hack/cluster's scripts, against
stand-in scripts: who stops what, and what a failure says. The real scripts run in every
e2e session (tests/e2e/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qsys_testkit.cluster import ClusterError, LocalCluster


def scripts(tmp_path: Path, up: str) -> LocalCluster:
    """up.sh runs `up`; down.sh and node.sh append their name and arguments to calls."""
    (tmp_path / "up.sh").write_text(f'echo "up $QSYS_REAL_NODE" >>"$CALLS"\n{up}\n')
    (tmp_path / "down.sh").write_text('echo down >>"$CALLS"\n')
    (tmp_path / "node.sh").write_text('echo "node $*" >>"$CALLS"\n')
    env = {"CALLS": str(tmp_path / "calls"), "QSYS_CLUSTER_DIR": str(tmp_path / "state")}
    return LocalCluster({**env, "QSYS_REAL_NODE": "lazy"}, timeout=2, scripts=tmp_path)


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


def test_a_cluster_this_started_is_stopped_and_a_reused_one_is_not(tmp_path: Path) -> None:
    local = scripts(tmp_path, "echo started")
    assert local.kubeconfig == tmp_path / "state" / "kubeconfig"
    with local.running() as started:
        assert started
    assert calls(tmp_path) == ["up lazy", "down"]
    with local.running(keep=True):
        pass
    reused = scripts(tmp_path, "echo running")
    with reused.running() as started:
        assert not started
    assert calls(tmp_path) == ["up lazy", "down", "up lazy", "up lazy"]


def test_a_failed_start_says_why_and_stops_nothing(tmp_path: Path) -> None:
    local = scripts(tmp_path, "echo 'port 12379 taken' >&2; exit 3")
    with pytest.raises(ClusterError, match=r"up\.sh exited 3:\nport 12379 taken"):
        local.up()
    assert calls(tmp_path) == ["up lazy"]


def test_a_start_that_hangs_is_stopped(tmp_path: Path) -> None:
    local = scripts(tmp_path, "sleep 30")
    with pytest.raises(ClusterError, match="took over 2s"):
        local.up()
    assert calls(tmp_path) == ["up lazy", "down"]


def test_the_owner_file_goes_with_the_cluster(tmp_path: Path) -> None:
    local = scripts(tmp_path, "echo started")
    local.owner_file.parent.mkdir(parents=True)
    local.owner_file.write_text(str(os.getpid()))
    local.ensure_real_node()
    local.import_images()
    local.down()
    assert not local.owner_file.exists()
    assert calls(tmp_path) == ["node ensure-up", "node import-images", "down"]


def test_a_failed_stop_raises_unless_told_not_to(tmp_path: Path) -> None:
    local = scripts(tmp_path, "echo started")
    (tmp_path / "down.sh").write_text("echo 'etcd would not stop' >&2; exit 1\n")
    with pytest.raises(ClusterError, match="etcd would not stop"):
        local.down()
    local.down(check=False)
