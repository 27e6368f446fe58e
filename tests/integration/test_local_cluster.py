"""LocalCluster (qsys_testkit.cluster), the one face of hack/cluster's scripts, against
stand-in scripts: who stops what, and what a failure says. The real scripts run in every
e2e session (tests/e2e/conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from qsys_testkit.checkout import REPO
from qsys_testkit.cluster import PLANES, ClusterError, LocalCluster


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


USER = """
import json, sys
from pathlib import Path
from qsys_testkit.cluster import LocalCluster
env, where = json.loads(sys.argv[1]), Path(sys.argv[2])
local = LocalCluster(env, timeout=2, scripts=where)
print("started" if local.join() else "joined", flush=True)
sys.stdin.read()
print("stopped" if local.leave() else "left", flush=True)
"""


def user(tmp_path: Path, local: LocalCluster) -> subprocess.Popen[str]:
    """Another process that joins local's plane, and leaves it when its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", USER, json.dumps(dict(local.env)), str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc


def test_the_last_process_sharing_a_plane_stops_it(tmp_path: Path) -> None:
    local = scripts(
        tmp_path, 'test -e "$CALLS.up" && echo running || { touch "$CALLS.up"; echo started; }'
    )
    first = user(tmp_path, local)
    try:
        assert not local.join()
        assert local.owner_file.read_text() == str(first.pid)
        assert not local.leave()
        assert calls(tmp_path) == ["up lazy", "up lazy"]
        assert local.join() is False
    finally:
        out, _ = first.communicate(timeout=10)
    assert out == "left\n"
    assert local.leave()
    assert calls(tmp_path) == ["up lazy", "up lazy", "up lazy", "down"]
    assert not local.owner_file.exists()
    assert list(local.users_dir.iterdir()) == []


def test_a_dead_user_does_not_keep_a_plane_up(tmp_path: Path) -> None:
    local = scripts(
        tmp_path, 'test -e "$CALLS.up" && echo running || { touch "$CALLS.up"; echo started; }'
    )
    crashed = user(tmp_path, local)
    crashed.kill()
    crashed.communicate(timeout=10)
    assert not local.join()
    assert local.leave()
    assert calls(tmp_path)[-1] == "down"


def test_a_plane_no_test_started_is_left_running(tmp_path: Path) -> None:
    local = scripts(tmp_path, "echo running")
    assert not local.join()
    assert not local.leave()
    assert calls(tmp_path) == ["up lazy"]


def test_a_failed_stop_raises_unless_told_not_to(tmp_path: Path) -> None:
    local = scripts(tmp_path, "echo started")
    (tmp_path / "down.sh").write_text("echo 'etcd would not stop' >&2; exit 1\n")
    with pytest.raises(ClusterError, match="etcd would not stop"):
        local.down()
    local.down(check=False)


LIB_VARS = [
    *("PLANE", "STATE", "REAL_NODE", "KUBE_GROUP", "POD_CIDR", "APISERVER_URL"),
    *("ETCD_PORT", "ETCD_PEER_PORT", "APISERVER_PORT", "CONTROLLER_MANAGER_PORT"),
    *("SCHEDULER_PORT", "KWOK_PORT", "KUBELET_PORT", "KUBELET_HEALTHZ_PORT"),
    *("KUBE_PROXY_HEALTHZ_PORT", "KUBE_PROXY_METRICS_PORT"),
]


def source_lib(plane: str, script: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """hack/cluster/lib.sh sourced for QSYS_CLUSTER_PLANE=plane, env on top of this
    process's environment without its QSYS_* variables, then script."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QSYS_")}
    return subprocess.run(
        ["bash", "-c", f"source hack/cluster/lib.sh; {script}"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env={**clean, **env, "QSYS_CLUSTER_PLANE": plane},
        timeout=60,
    )


def lib_settings(plane: str, **env: str) -> dict[str, str]:
    """What hack/cluster/lib.sh sets for QSYS_CLUSTER_PLANE=plane on top of env."""
    names = " ".join(LIB_VARS)
    result = source_lib(plane, f'for v in {names}; do echo "$v=${{!v}}"; done', **env)
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines())


def test_the_planes_share_no_port_state_directory_or_pod_range() -> None:
    """Two planes run at once under `make test` (main with the real node, kwok beside it)
    and the floor's after them: none may reuse another's ports, state or kwok addresses,
    and the main plane's overrides never leak into the others."""
    overrides = {
        "QSYS_CLUSTER_DIR": "/tmp/elsewhere",
        "QSYS_APISERVER_PORT": "17443",
        "QSYS_POD_CIDR": "127.90.0.1/16",
        "QSYS_REAL_NODE": "lazy",
    }
    planes = {plane: lib_settings(plane, **overrides) for plane in PLANES}
    assert planes["main"]["STATE"] == "/tmp/elsewhere"
    assert planes["main"]["APISERVER_PORT"] == "17443"
    assert planes["main"]["REAL_NODE"] == "lazy"
    ports = [key for key in LIB_VARS if key.endswith("_PORT")]
    seen: dict[str, str] = {}
    for plane, settings in planes.items():
        local = LocalCluster(plane=plane)
        if plane != "main":
            assert settings["STATE"] == str(local.state_dir)
            assert settings["REAL_NODE"] == "0"
            assert settings["APISERVER_URL"].startswith("https://127.0.0.1:")
        for key in ports:
            value = settings[key]
            assert value.isdigit(), (plane, key, value)
            assert value not in seen, f"{plane} {key}={value} is also {seen[value]}"
            seen[value] = f"{plane} {key}"
    assert len({settings["STATE"] for settings in planes.values()}) == len(PLANES)
    assert len({settings["POD_CIDR"] for settings in planes.values()}) == len(PLANES)
    assert planes["floor"]["KUBE_GROUP"] == "kube-floor"
    assert planes["kwok"]["KUBE_GROUP"] == "kube"


def test_an_unknown_plane_is_refused() -> None:
    with pytest.raises(ValueError, match="no plane 'side'"):
        LocalCluster(plane="side")
    result = source_lib("side")
    assert result.returncode == 1
    assert "QSYS_CLUSTER_PLANE=side: use main, kwok or floor" in result.stderr


def test_a_plane_never_takes_another_planes_processes_for_its_own() -> None:
    """The main plane's state directory (.cache/cluster) is a prefix of the others'
    (.cache/cluster-kwok): its up.sh and down.sh must not stop a running kwok plane."""
    etcd = source_lib("main", "bin_path etcd").stdout.strip()
    kwok_state = source_lib("kwok", 'echo "$STATE"').stdout.strip()
    stand_in = subprocess.Popen(
        [
            "bash",
            "-c",
            f"exec -a {etcd} bash -c 'sleep 60; :' --data-dir={kwok_state}/etcd",
        ],
        start_new_session=True,
    )
    try:
        pid = str(stand_in.pid)
        wait_until = 50
        while etcd not in Path(f"/proc/{pid}/cmdline").read_text() and wait_until:
            subprocess.run(["sleep", "0.1"], check=True)
            wait_until -= 1
        assert pid in source_lib("kwok", "all_our_pids etcd").stdout.split()
        assert pid not in source_lib("main", "all_our_pids etcd").stdout.split()
        assert pid not in source_lib("floor", "all_our_pids etcd").stdout.split()
    finally:
        os.killpg(stand_in.pid, signal.SIGKILL)
        stand_in.wait()
