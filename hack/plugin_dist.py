"""The kubectl plugin's distributions:
`python hack/plugin_dist.py DIST [--venv DIR [--installer pip|uv]]`.

Writes into DIST:
- the wheels of qsys-kubectl (plugin/pyproject.toml) and of qsys-operator, which it
  depends on, built from a copy of the sources (never in the checkout), for
  `pipx install DIST/qsys_kubectl-VERSION-py3-none-any.whl --pip-args="--find-links DIST"`;
- kubectl-qsys-vVERSION.tar.gz, the krew archive (the launcher plugin/krew/kubectl-qsys,
  both wheels, LICENSE), byte-for-byte the same for the same wheels;
- qsys.yaml, plugins/qsys.yaml with the archive's sha256.

With --venv, also installs the plugin's wheel into a fresh virtualenv DIR as `pipx
install` does (qsys-operator from DIST, the other dependencies from pip's index), from
outside the checkout and without PYTHONPATH. With `--installer uv` uv does the same
(the uv beside this interpreter, a dev dependency): 1 s instead of pip's 32 s, for a
test whose subject is the installed plugin rather than pip. Prints the paths as JSON.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import venv
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "plugin"
EPOCH = 1704067200
"""mtime of every archive member (2024-01-01T00:00:00Z) and SOURCE_DATE_EPOCH of the wheels."""


def version(pyproject: Path) -> str:
    project = tomllib.loads(pyproject.read_text("utf-8"))["project"]
    value: str = project["version"]
    return value


def _copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(
        src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "krew")
    )


def _main_sources(dest: Path) -> None:
    """pyproject.toml, README.md and the packages its packages.find selects."""
    pyproject = REPO / "pyproject.toml"
    find = tomllib.loads(pyproject.read_text("utf-8"))["tool"]["setuptools"]["packages"]["find"]
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, dest / name)
    for where in find["where"]:
        for pattern in find["include"]:
            for pkg in (REPO / where).glob(pattern):
                if (pkg / "__init__.py").is_file():
                    _copy_tree(pkg, dest / where / pkg.name)


def build_wheels(dist: Path) -> list[Path]:
    with tempfile.TemporaryDirectory(prefix="qsys-plugin-dist-") as tmp:
        main, plugin = Path(tmp) / "main", Path(tmp) / "plugin"
        main.mkdir()
        _main_sources(main)
        _copy_tree(PLUGIN, plugin)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--wheel-dir",
                str(dist),
                str(main),
                str(plugin),
            ],
            check=True,
            env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)},
            timeout=600,
        )
    names = (
        f"qsys_operator-{version(REPO / 'pyproject.toml')}-py3-none-any.whl",
        f"qsys_kubectl-{version(PLUGIN / 'pyproject.toml')}-py3-none-any.whl",
    )
    wheels = [dist / name for name in names]
    missing = [w.name for w in wheels if not w.is_file()]
    if missing:
        raise SystemExit(f"pip wheel did not write {missing}")
    return wheels


def _member(name: str, data: bytes, mode: int) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, data


def build_archive(dist: Path, wheels: list[Path], plugin_version: str) -> Path:
    launcher = (PLUGIN / "krew" / "kubectl-qsys").read_text("utf-8")
    members = [
        _member("kubectl-qsys", launcher.replace("@VERSION@", plugin_version).encode(), 0o755),
        _member("LICENSE", (REPO / "LICENSE").read_bytes(), 0o644),
        *(_member(w.name, w.read_bytes(), 0o644) for w in sorted(wheels)),
    ]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    archive = dist / f"kubectl-qsys-v{plugin_version}.tar.gz"
    with archive.open("wb") as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=EPOCH) as gz:
        gz.write(raw.getvalue())
    return archive


def write_manifest(dist: Path, archive: Path) -> Path:
    manifest = yaml.safe_load((REPO / "plugins" / "qsys.yaml").read_text("utf-8"))
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    for platform in manifest["spec"]["platforms"]:
        platform["sha256"] = sha256
    out = dist / "qsys.yaml"
    out.write_text(yaml.safe_dump(manifest, sort_keys=False), "utf-8")
    return out


def install_fresh(dist: Path, wheel: Path, target: Path, installer: str = "pip") -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    if installer == "uv":
        uv = Path(sys.executable).parent / "uv"
        if not uv.is_file():
            raise SystemExit(f"--installer uv: no {uv} (make install)")
        venv.EnvBuilder(with_pip=False, clear=True).create(target)
        # Compiled as pip compiles, or the plugin's first run compiles the Kubernetes client.
        command = [str(uv), "pip", "install", "--quiet", "--compile-bytecode"]
        command += ["--python", str(target / "bin" / "python")]
    else:
        venv.EnvBuilder(with_pip=True, clear=True).create(target)
        command = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        command.append("--disable-pip-version-check")
    subprocess.run(
        [*command, "--find-links", str(dist), str(wheel)],
        cwd=target,
        env=env,
        check=True,
        timeout=900,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dist", type=Path)
    parser.add_argument("--venv", type=Path)
    parser.add_argument("--installer", choices=("pip", "uv"), default="pip")
    args = parser.parse_args(argv)
    fresh: Path | None = args.venv.resolve() if args.venv else None
    installer: str = args.installer
    dist: Path = args.dist.resolve()
    dist.mkdir(parents=True, exist_ok=True)
    plugin_version = version(PLUGIN / "pyproject.toml")
    wheels = build_wheels(dist)
    archive = build_archive(dist, wheels, plugin_version)
    manifest = write_manifest(dist, archive)
    paths = {"wheels": [str(w) for w in wheels], "archive": str(archive)}
    if fresh is not None:
        install_fresh(dist, wheels[1], fresh, installer)
        paths["venv"] = str(fresh)
    print(json.dumps({**paths, "manifest": str(manifest)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
