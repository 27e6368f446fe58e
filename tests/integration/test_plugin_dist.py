"""`kubectl qsys` installs on its own: its wheel (and the qsys-operator wheel it depends on),
built from a copy of the sources by hack/plugin_dist.py, goes into a fresh virtualenv as
`pipx install` does, and the pinned krew installs the krew manifest from the archive.
Both run from a directory outside the checkout, with no PYTHONPATH, so nothing of the
checkout can stand in for the installed files. The plugin against a real API server:
tests/e2e/test_first_ten_minutes.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from qsys_testkit import free_port
from qsys_testkit.checkout import pinned_tool

pytestmark = pytest.mark.tools("krew", "kube")

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]["version"]
COMMANDS = "{status,token,can-i,call,audit}"
INSTALL_TIMEOUT_S = 600


@dataclass
class Dist:
    directory: Path
    wheels: list[Path]
    archive: Path
    manifest: Path
    venv: Path
    """A fresh virtualenv with the plugin's wheel installed (pip found qsys-operator in
    the dist directory, the other dependencies in its index or cache)."""


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    out = tmp_path_factory.mktemp("plugin-dist")
    fresh = tmp_path_factory.mktemp("fresh") / "venv"
    args = [sys.executable, str(REPO / "hack" / "plugin_dist.py"), str(out), "--venv", str(fresh)]
    result = run(args, out, timeout=INSTALL_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    paths = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(paths["venv"]) == fresh
    wheels = [Path(w) for w in paths["wheels"]]
    return Dist(out, wheels, Path(paths["archive"]), Path(paths["manifest"]), fresh)


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def clean_env(home: Path, *path: Path) -> dict[str, str]:
    """No PYTHONPATH, no virtualenv of the checkout on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "VIRTUAL_ENV", "KUBECONFIG"))
    }
    env["HOME"] = str(home)
    env["PATH"] = os.pathsep.join([*(str(p) for p in path), "/usr/local/bin", "/usr/bin", "/bin"])
    return env


def test_the_wheels_hold_what_they_should(dist: Dist) -> None:
    import zipfile

    plugin, operator = (
        next(w for w in dist.wheels if w.name.startswith(prefix))
        for prefix in ("qsys_kubectl-", "qsys_operator-")
    )
    assert plugin.name == f"qsys_kubectl-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(plugin) as whl:
        names = whl.namelist()
        meta = whl.read(f"qsys_kubectl-{VERSION}.dist-info/METADATA").decode()
        entry_points = whl.read(f"qsys_kubectl-{VERSION}.dist-info/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"qsys_kubectl", f"qsys_kubectl-{VERSION}.dist-info"}
    assert f"Requires-Dist: qsys-operator=={VERSION}" in meta
    assert "kubectl-qsys = qsys_kubectl.cli:run" in entry_points
    with zipfile.ZipFile(operator) as whl:
        top = {n.split("/")[0] for n in whl.namelist()}
        scripts = whl.read(f"qsys_operator-{VERSION}.dist-info/entry_points.txt").decode()
    # The plugin is no longer part of the operator's distribution (no two owners of a file).
    assert "qsys_kubectl" not in top
    assert "kubectl-qsys" not in scripts


def test_installed_into_a_fresh_virtualenv_the_plugin_runs(dist: Dist, tmp_path: Path) -> None:
    fresh = dist.venv
    env = clean_env(tmp_path, fresh / "bin")
    code = "import qsys_kubectl as k, qsys_operator as o; print(k.__file__, o.__file__)"
    where = run([str(fresh / "bin" / "python"), "-c", code], tmp_path, env)
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert Path(path).is_relative_to(fresh), path
        assert not Path(path).is_relative_to(REPO), path
    helped = run(["kubectl-qsys", "--help"], tmp_path, env)
    assert helped.returncode == 0, helped.stderr
    assert COMMANDS in helped.stdout
    # A real command, to an API server that is not there: the import graph of every
    # command loads, and the failure is one clear line with exit 2.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}}
                ],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    status = run(["kubectl-qsys", "status", "-A", "--kubeconfig", str(kubeconfig)], tmp_path, env)
    assert status.returncode == 2, (status.stdout, status.stderr)
    assert status.stderr.startswith("error: "), status.stderr
    assert "Traceback" not in status.stderr


def krew(root: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(home, root / "bin") | {"KREW_ROOT": str(root), "KREW_NO_UPGRADE_CHECK": "1"}
    return subprocess.run(
        [str(pinned_tool("krew", "krew")), *args],
        cwd=home,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )


def test_krew_installs_the_manifest_from_the_archive(dist: Dist, tmp_path: Path) -> None:
    manifest = yaml.safe_load(dist.manifest.read_text("utf-8"))
    (platform,) = manifest["spec"]["platforms"]
    assert platform["sha256"] == hashlib.sha256(dist.archive.read_bytes()).hexdigest()
    home, root = tmp_path / "home", tmp_path / "krew"
    home.mkdir()
    # The checked-in manifest, before the release fills in the sha256: krew checks it.
    unfilled = krew(
        root,
        home,
        "install",
        f"--manifest={REPO / 'plugins' / 'qsys.yaml'}",
        f"--archive={dist.archive}",
    )
    assert unfilled.returncode != 0
    assert f"got {platform['sha256']}" in unfilled.stderr, unfilled.stderr
    done = krew(root, home, "install", f"--manifest={dist.manifest}", f"--archive={dist.archive}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Installed plugin: qsys" in done.stdout + done.stderr
    # (`krew list` wants the git index, which these tests never fetch.)
    receipt = yaml.safe_load((root / "receipts" / "qsys.yaml").read_text("utf-8"))
    assert receipt["spec"]["version"] == f"v{VERSION}"
    assert (root / "bin" / "kubectl-qsys").is_symlink()
    # kubectl finds the plugin on PATH; its first run installs the wheels of the archive.
    kubectl = pinned_tool("kube", "kubectl")
    env = clean_env(home, root / "bin")
    ran = run([str(kubectl), "qsys", "--help"], home, env, INSTALL_TIMEOUT_S)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert COMMANDS in ran.stdout
    assert (home / ".cache" / "qsys-kubectl" / VERSION / ".complete").is_file()
    again = run([str(kubectl), "qsys", "--help"], home, env)
    assert again.returncode == 0
    assert "first run" not in again.stderr
