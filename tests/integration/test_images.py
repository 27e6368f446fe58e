"""The images `make images` builds without Docker (hack/images.py, docs/images.md).

Read from their OCI tarballs with tarfile (no container runtime): the names the
chart and the operator deploy, the user, entry point, arguments, ports and
environment the operator and the chart expect, and the Python package set
pyproject.toml asks for. Then each entry point runs from the unpacked root filesystem, chrooted
as UID 10001 on a read-only bind mount with every shell removed, so a broken
image fails here before it reaches a node. Missing images fail (run `make
images`), never skip.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from qsys_operator.render.common import HTTP_PORT, METRICS_PORT, QRC_PORT
from qsys_operator.render.config import CONFIG_PATH
from qsys_operator.render.deployment import RUN_AS
from qsys_operator.settings import DEFAULT_GATEWAY_IMAGE
from qsys_testkit import free_port, port_open, wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "qsys-operator"
SITE_PACKAGES = "opt/venv/lib/python3.11/site-packages/"
ENV = {
    "PATH": "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}
# Image key in the chart's values.yaml -> what the image must run.
RUNTIME: dict[str, dict[str, Any]] = {
    "image": {
        "Entrypoint": ["/opt/venv/bin/qsys-operator"],
        "Cmd": [],
        "ports": {8000, 8081},  # the chart's metrics.port and health.port
    },
    "gatewayImage": {
        "Entrypoint": ["/opt/venv/bin/qsys-gateway"],
        "Cmd": ["--config", CONFIG_PATH],
        "ports": {HTTP_PORT, QRC_PORT, METRICS_PORT},
    },
}
# Python 3.11 on Linux, as the image runs it: the environment Requires-Dist markers see.
MARKER_ENV = {
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}

pytestmark = pytest.mark.timeout(120)


class OciArchive:
    """An OCI image layout tarball, read in place."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        index = self.json({"digest": None}, "index.json")
        self.manifests = {
            m["annotations"]["io.containerd.image.name"]: m for m in index["manifests"]
        }

    def blob(self, desc: dict[str, Any], member: str | None = None) -> bytes:
        name = member or "blobs/" + desc["digest"].replace(":", "/")
        f = self.tar.extractfile(name)
        assert f is not None, name
        return f.read()

    def json(self, desc: dict[str, Any], member: str | None = None) -> Any:
        return json.loads(self.blob(desc, member))

    def manifest(self, name: str) -> Any:
        return self.json(self.manifests[name])

    def config(self, name: str) -> Any:
        return self.json(self.manifest(name)["config"])

    def layers(self, name: str) -> Iterator[tarfile.TarFile]:
        for desc in self.manifest(name)["layers"]:
            data = self.blob(desc)
            if desc["mediaType"].endswith("+gzip"):
                data = gzip.decompress(data)
            with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                yield layer

    def unpack(self, name: str, dest: Path) -> None:
        for layer in self.layers(name):
            assert not [m for m in layer.getnames() if ".wh." in m], "no whiteouts expected"
            layer.extractall(dest, filter="fully_trusted")


def image_paths() -> list[Path]:
    out = subprocess.run(
        [sys.executable, str(REPO / "hack" / "images.py"), "paths"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    paths = [Path(line) for line in out.splitlines()]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.fail(f"images not built ({', '.join(missing)}): run `make images`")
    return paths


@pytest.fixture(scope="module")
def archive() -> Iterator[OciArchive]:
    with tarfile.open(image_paths()[0]) as tar:
        yield OciArchive(tar)


@pytest.fixture(scope="module")
def pause() -> Iterator[OciArchive]:
    with tarfile.open(image_paths()[1]) as tar:
        yield OciArchive(tar)


def chart_image(key: str) -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text("utf-8"))
    values = yaml.safe_load((CHART / "values.yaml").read_text("utf-8"))[key]
    return f"{values['repository']}:{values['tag'] or chart['appVersion']}"


def test_images_carry_the_names_the_chart_and_the_operator_deploy(archive: OciArchive) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]["version"]
    assert set(archive.manifests) == {
        chart_image("image"),
        chart_image("gatewayImage"),
        f"ghcr.io/qsys-operator/core-sim:{version}",
    }
    assert chart_image("gatewayImage") == DEFAULT_GATEWAY_IMAGE
    for desc in archive.manifests.values():
        assert desc["annotations"]["org.opencontainers.image.ref.name"] in archive.manifests
    layers = {json.dumps(archive.manifest(name)["layers"]) for name in archive.manifests}
    assert len(layers) == 1, "the three images share their layers"


@pytest.mark.parametrize("key", sorted(RUNTIME))
def test_image_config_is_what_the_operator_and_the_chart_expect(
    archive: OciArchive, key: str
) -> None:
    want = RUNTIME[key]
    config = archive.config(chart_image(key))
    run = config["config"]
    assert config["architecture"] == "amd64"
    assert config["os"] == "linux"
    assert run["User"] == f"{RUN_AS}:{RUN_AS}"
    assert run["Entrypoint"] == want["Entrypoint"]
    assert (run.get("Cmd") or []) == want["Cmd"]
    assert set(run["ExposedPorts"]) == {f"{p}/tcp" for p in want["ports"]}
    assert dict(e.split("=", 1) for e in run["Env"]) == ENV


def test_core_sim_image_runs_the_simulator_as_the_same_user(archive: OciArchive) -> None:
    names = [n for n in archive.manifests if "/core-sim:" in n]
    run = archive.config(names[0])["config"]
    gateway = archive.config(chart_image("gatewayImage"))["config"]
    assert run["Entrypoint"] == ["/opt/venv/bin/qsys-core-sim"]
    assert set(run["ExposedPorts"]) == {"1710/tcp"}
    assert (run["User"], run["Env"]) == (gateway["User"], gateway["Env"])


def installed_distributions(archive: OciArchive) -> dict[str, dict[str, Any]]:
    """Canonical name -> {version, requires} of every *.dist-info in the image's venv."""
    found: dict[str, dict[str, Any]] = {}
    for layer in archive.layers(chart_image("gatewayImage")):
        for member in layer.getmembers():
            if member.name.startswith(SITE_PACKAGES) and member.name.endswith(
                ".dist-info/METADATA"
            ):
                f = layer.extractfile(member)
                assert f is not None
                meta = Parser().parsestr(f.read().decode())
                found[canonicalize_name(meta["Name"])] = {
                    "version": meta["Version"],
                    "requires": meta.get_all("Requires-Dist") or [],
                }
    return found


def closure(roots: list[str], installed: dict[str, dict[str, Any]]) -> set[str]:
    """Distributions pip installs for ROOTS on the image's platform (markers and extras applied)."""
    needed: set[tuple[str, str]] = set()
    todo = [(Requirement(r), "") for r in roots]
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({**MARKER_ENV, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        assert name in installed, f"{req} is required but not installed: make images-lock"
        assert req.specifier.contains(installed[name]["version"], prereleases=True), (
            f"{name} {installed[name]['version']} does not satisfy {req}"
        )
        new_extras = [e for e in ("", *sorted(req.extras)) if (name, e) not in needed]
        needed.update((name, e) for e in new_extras)
        for sub in installed[name]["requires"]:
            for e in new_extras:
                todo.append((Requirement(sub), e))
    return {n for n, _ in needed}


def test_installed_packages_are_what_pyproject_asks_for(archive: OciArchive) -> None:
    """`pip install` of the project gives a venv with the closure of pyproject's
    dependencies: the image holds exactly that set, at the pinned versions."""
    installed = installed_distributions(archive)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]["dependencies"]
    assert set(installed) == closure(["qsys-operator", *deps], installed)
    runtime = [r for r in installed["qsys-operator"]["requires"] if "extra ==" not in r]
    assert sorted(map(str, map(Requirement, runtime))) == sorted(map(str, map(Requirement, deps)))
    pins = {}
    for line in (REPO / "hack" / "images" / "requirements.txt").read_text("utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("==")
            pins[canonicalize_name(name)] = rest.split()[0]
    assert {n: d["version"] for n, d in installed.items() if n != "qsys-operator"} == pins


# --- running the entry points ----------------------------------------------


@pytest.fixture(scope="module")
def rootfs(archive: OciArchive, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("image") / "rootfs"
    archive.unpack(chart_image("gatewayImage"), root)
    # Nothing the entry points run may need a shell.
    for shell in ("bin/sh", "bin/dash", "bin/bash", "usr/bin/sh", "usr/bin/dash", "usr/bin/bash"):
        (root / shell).unlink(missing_ok=True)
    yield root
    shutil.rmtree(root)


def in_image(archive: OciArchive, root: Path, *argv: str) -> subprocess.Popen[str]:
    """ARGV in ROOT as the image's user, with the image's environment, on a read-only
    bind mount in a private mount namespace (gone with the process)."""
    run = archive.config(chart_image("gatewayImage"))["config"]
    script = (
        'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && '
        'exec chroot --userspec="$USERSPEC" "$0" "$@"'
    )
    env = dict(e.split("=", 1) for e in run["Env"])
    return subprocess.Popen(
        ["unshare", "--mount", "--propagation=private", "/bin/sh", "-c", script, str(root), *argv],
        env={**env, "USERSPEC": run["User"], "PATH": f"{env['PATH']}:/usr/sbin:/sbin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


@pytest.mark.parametrize("script", ["qsys-gateway", "qsys-operator", "qsys-core-sim"])
def test_entry_point_runs_read_only_as_10001(
    archive: OciArchive, rootfs: Path, script: str
) -> None:
    code, out, err = finish(in_image(archive, rootfs, script, "--help"))
    assert code == 0, err
    assert out.startswith(f"usage: {script}"), out


def test_all_bytecode_is_prebuilt_and_every_package_imports(
    archive: OciArchive, rootfs: Path
) -> None:
    """`python -v` reports each module it has to compile; on a read-only root that
    would happen at every start. None may: every module loads from its .pyc."""
    modules = ", ".join(
        [
            "qsys_protocol.qrc.client",
            "qsys_gateway.app",
            "qsys_operator.handlers",
            "qsys_core_sim.server",
            "kopf",
            "kubernetes",
            "uvloop",
        ]
    )
    probe = f"import os, {modules}; print(os.getuid(), os.getgid())"
    code, out, err = finish(in_image(archive, rootfs, "python3", "-v", "-c", probe))
    assert code == 0, err[-3000:]
    assert out.split() == [str(RUN_AS), str(RUN_AS)]
    assert "code object from '/opt/venv/" in err
    stale = [ln for ln in err.splitlines() if "could not create" in ln or "bytecode is stale" in ln]
    assert not stale, stale[:10]


def test_core_sim_serves_qrc_from_the_image(archive: OciArchive, rootfs: Path) -> None:
    port = free_port()
    proc = in_image(archive, rootfs, "qsys-core-sim", "--host", "127.0.0.1", "--port", str(port))
    try:

        def listening() -> bool:
            assert proc.poll() is None, finish(proc)
            return port_open(port)

        wait_for("qsys-core-sim in the image to listen", listening, timeout=30)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b'{"jsonrpc":"2.0","id":1,"method":"StatusGet"}\x00')
            data = b""
            while b'"id":1' not in data.replace(b" ", b""):
                chunk = conn.recv(65536)
                assert chunk, data
                data += chunk
        assert b'"Platform"' in data
    finally:
        proc.terminate()
        code, _, err = finish(proc, timeout=15)
    assert code == 0, err


def test_pause_image(pause: OciArchive, tmp_path: Path) -> None:
    (name,) = pause.manifests
    assert re.fullmatch(r"registry\.k8s\.io/pause:\d+\.\d+(\.\d+)?", name)
    run = pause.config(name)["config"]
    assert run["Entrypoint"] == ["/pause"]
    assert run["User"] == "65535:65535"
    pause.unpack(name, tmp_path)
    tmp_path.chmod(0o755)  # the root directory the unprivileged user starts in
    assert {p.name for p in tmp_path.iterdir()} == {"pause"}
    # Static: it runs in a root filesystem that holds nothing else.
    version = subprocess.run(
        ["chroot", "--userspec", run["User"], str(tmp_path), "/pause", "-v"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    assert version.startswith(f"pause.c v{name.rsplit(':', 1)[1]}-"), version
