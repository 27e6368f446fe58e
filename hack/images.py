"""Builds the container images without Docker (docs/images.md).

    python hack/images.py build    build what is missing (a no-op while the inputs are unchanged)
    python hack/images.py paths    the OCI tarballs, one a line (built or not)
    python hack/images.py names    the image names the tarballs carry, one a line
    python hack/images.py lock     re-pin hack/images/requirements*.txt from pyproject.toml
    python hack/images.py lock-platforms   re-pin only the arm64 lock, to the native lock's versions
    python hack/images.py release  also the multi-arch (amd64, arm64) layout and the SBOMs
    python hack/images.py release-paths   where `release` puts them (JSON)

One OCI tarball holds the operator, gateway and Core simulator images: three
manifests over the same three layers (Debian bookworm minbase with Debian's
Python 3.11, the pinned dependencies in /opt/venv, the project itself), which
differ only in entry point, arguments and exposed ports. A second tarball holds
the pause image, built from pause.c of the pinned Kubernetes module. Each
tarball names its images with `io.containerd.image.name`, so
`ctr -n k8s.io images import --base-name X FILE` stores them under those names.

Every step's output lives in $QSYS_TOOLS_CACHE/images/STEP-KEY, where KEY hashes
that step's inputs (the command it runs, the code of the step, the files it
reads, the keys of the steps below it): a changed source file rebuilds only the
project layer. Needs root (mmdebstrap --mode=root), mmdebstrap, umoci, gcc and
Go (hack/install-system-deps.sh).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "hack" / "images" / "requirements.txt"
PROJECT_FILES = ("pyproject.toml", "README.md")

# Every file in every layer carries this mtime (2024-01-01T00:00:00Z): layers
# are byte-for-byte the same for the same inputs. Bytecode is compiled with
# unchecked-hash invalidation, so Python never compares it with source mtimes.
EPOCH = 1704067200
SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3-minimal", "python3")
PYTHON = "3.11"
VENV = "/opt/venv"
SITE_PACKAGES = f"{VENV}/lib/python{PYTHON}/site-packages"
RUN_AS = "10001:10001"
ENV = (
    f"PATH={VENV}/bin:/usr/local/bin:/usr/bin:/bin",
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
)
# The platforms of the released multi-arch images (docs/images.md). The cluster's
# images.tar holds the first (the build machine's); every platform gets its own
# Debian layer and wheel layer under the same project layer.
ARCHES = ("amd64", "arm64")
WHEEL_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}
LOCKS = {"amd64": LOCK, "arm64": LOCK.with_name("requirements-arm64.txt")}


def platforms(arch: str) -> tuple[str, ...]:
    """Wheel tags for ARCH: glibc 2.36 (bookworm) runs every manylinux wheel up to 2_36."""
    machine = WHEEL_MACHINE[arch]
    legacy = (
        ("manylinux2014", "manylinux2010", "manylinux1") if arch == "amd64" else ("manylinux2014",)
    )
    return (
        *(f"manylinux_2_{minor}_{machine}" for minor in range(36, 4, -1)),
        *(f"{tag}_{machine}" for tag in legacy),
    )


PLATFORMS = platforms("amd64")
PACKAGES_FILE = "packages.json"  # beside a Debian layer: what it holds, for the SBOM
WHEELS_FILE = "wheels.json"  # beside a wheel layer: pip's installation report
PAUSE_VERSION = "3.10.2"  # PauseVersion of the pinned Kubernetes release
PAUSE_RUN_AS = "65535:65535"  # as the upstream image
# Outputs kept per step: the current one and a few for other worktrees of the same clone.
KEEP = 3


@dataclass(frozen=True)
class Component:
    """One image of the project: an entry point of pyproject.toml, its arguments and ports."""

    name: str  # image repository's last element, as the chart names it
    script: str
    cmd: tuple[str, ...]
    ports: tuple[int, ...]


# What runs them expects the same (tests/unit/test_image_components.py).
COMPONENTS = (
    Component("operator", "qsys-operator", (), (8000, 8081)),
    Component(
        "gateway",
        "qsys-gateway",
        ("--config", "/etc/qsys-gateway/gateway.yaml"),
        (8080, 1710, 9090),
    ),
    Component("core-sim", "qsys-core-sim", (), (1710,)),
)
REGISTRY = "ghcr.io/qsys-operator"


def project_sources() -> list[str]:
    """The package directories setuptools installs (pyproject's packages.find)."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]
    find = find["packages"]["find"]
    return sorted(
        str(pkg.relative_to(REPO))
        for where in find["where"]
        for pattern in find["include"]
        for pkg in (REPO / where).glob(pattern)
        if (pkg / "__init__.py").is_file()
    )


def project_version() -> str:
    data = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
    return str(data["project"]["version"])


def image_names() -> dict[str, str]:
    """Component name -> image reference: the chart's defaults (repository and appVersion tag)."""
    version = project_version()
    return {c.name: f"{REGISTRY}/{c.name}:{version}" for c in COMPONENTS}


PAUSE_NAME = f"registry.k8s.io/pause:{PAUSE_VERSION}"


def cache_root() -> Path:
    base = os.environ.get("QSYS_TOOLS_CACHE") or str(Path.home() / ".cache" / "qsys-operator")
    return Path(base) / "images"


def log(msg: str) -> None:
    print(f"images: {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], cwd: str | None = None, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(argv, check=True, text=True, capture_output=True, cwd=cwd, env=env)
    except FileNotFoundError as exc:
        raise SystemExit(
            f"images: {argv[0]} not found; run hack/install-system-deps.sh (make install)"
        ) from exc
    except subprocess.CalledProcessError as exc:
        raise SystemExit(
            f"images: {' '.join(argv[:4])} ... failed ({exc.returncode}):\n{exc.stderr[-4000:]}"
        ) from exc
    return proc.stdout


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:12]


def tree_digest(paths: Iterable[Path]) -> str:
    """Hash of relative paths, modes and contents of every file below PATHS (no bytecode)."""
    parts: list[str | bytes] = []
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            parts += [str(f.relative_to(REPO)), oct(f.stat().st_mode & 0o111), f.read_bytes()]
    return digest(*parts)


def debian_mirrors() -> list[str]:
    """sources.list lines of the Debian suites apt uses on this machine (its mirror, its suites)."""
    out = run(["apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE) $(TARGET_OF)"])
    lines = set()
    for line in out.splitlines():
        uri, _, rest = line.partition(" ")
        release, _, kind = rest.partition(" ")
        if kind == "deb" and release.split("-")[0] == SUITE:
            lines.add(f"deb {uri} {release} main")
    if not lines:
        raise SystemExit(f"images: apt has no {SUITE} sources (apt-get indextargets)")
    return sorted(lines)


DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
MERGED_USR_HOOK = "/usr/share/mmdebstrap/hooks/merged-usr/setup00.sh"
# The downloaded .deb files stay in the root filesystem until the builder has
# hashed them for the SBOM (drop_build_traces removes them).
KEEP_DEBS = ("--skip=download/empty", "--skip=essential/unlink", "--skip=cleanup/apt")


def mmdebstrap_argv(target: Path) -> list[str]:
    return [
        "mmdebstrap",
        "--quiet",
        "--mode=root",
        "--variant=minbase",
        f"--include={','.join(DEBIAN_PACKAGES)}",
        *KEEP_DEBS,
        *(f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES),
        SUITE,
        str(target),
        *debian_mirrors(),
    ]


def foreign_argv(target: Path, arch: str, packages: list[str]) -> list[str]:
    """Extract (never configure) PACKAGES for ARCH: no foreign code runs on the build
    host, so no qemu or binfmt_misc registration is needed (docs/images.md)."""
    return [
        "mmdebstrap",
        "--quiet",
        "--mode=root",
        "--variant=extract",
        f"--architectures={arch}",
        "--skip=check/qemu",
        # Merged /usr (bin -> usr/bin, ...) as the native layer has it; the hook only
        # makes symlinks and records a stub package in the target's own dpkg database.
        f"--setup-hook={MERGED_USR_HOOK}",
        f"--include={','.join(packages)}",
        *KEEP_DEBS,
        SUITE,
        str(target),
        *debian_mirrors(),
    ]


# --- layers ----------------------------------------------------------------


def pack(src: Path, out: Path, *, root_owned: bool) -> None:
    """A reproducible layer tarball of SRC's contents (sorted, fixed mtimes, numeric owners)."""
    names = sorted(p.name for p in src.iterdir())
    argv = [
        "tar",
        "--create",
        f"--file={out}",
        f"--directory={src}",
        "--format=pax",
        "--sort=name",
        "--numeric-owner",
        f"--mtime=@{EPOCH}",
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
    ]
    if root_owned:
        argv += ["--owner=0", "--group=0", "--mode=u+rw,go-w,go+rX"]
    run([*argv, "--", *names])


def compile_bytecode(python: list[str], root: Path, *dirs: str) -> None:
    """Bytecode next to the sources, checked by hash only: nothing is written at run time."""
    run(
        [
            *python,
            "-m",
            "compileall",
            "-q",
            "--invalidation-mode=unchecked-hash",
            "-x",
            "_py_31[2-9]_",  # coredis: modules for newer Pythons, never imported on 3.11
            *(["-s", str(root), "-p", "/"] if python[0] != "chroot" else []),
            *dirs,
        ]
    )


DEB_FIELDS = ("Package", "Version", "Architecture", "Source")


def deb_records(rootfs: Path) -> list[dict[str, str]]:
    """The .deb files mmdebstrap downloaded into ROOTFS: control fields and sha256."""
    records = []
    for deb in sorted((rootfs / "var/cache/apt/archives").glob("*.deb")):
        fields = run(["dpkg-deb", "--field", str(deb), *DEB_FIELDS])
        record = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (ln.partition(":") for ln in fields.splitlines())
            if v
        )
        record["sha256"] = hashlib.sha256(deb.read_bytes()).hexdigest()
        record["file"] = deb.name
        records.append(record)
    if not records:
        raise SystemExit(f"images: no .deb files left in {rootfs} for the SBOM")
    return records


def installed_packages(rootfs: Path) -> dict[str, str]:
    """Package -> version of what dpkg configured in ROOTFS."""
    out = run(
        [
            "dpkg-query",
            f"--admindir={rootfs}/var/lib/dpkg",
            "--show",
            "--showformat=${Package} ${Version} ${db:Status-Status}\\n",
        ]
    )
    return {
        name: version
        for name, version, status in (ln.split() for ln in out.splitlines())
        if status == "installed"
    }


def drop_build_traces(rootfs: Path) -> None:
    """The runtime provides /dev, /etc/resolv.conf and /etc/hostname; the image
    carries no device nodes, no apt lists or .deb files, no trace of the build host."""
    for entry in (rootfs / "dev").iterdir():
        entry.unlink() if not entry.is_dir() or entry.is_symlink() else shutil.rmtree(entry)
    for name in ("etc/resolv.conf", "etc/hostname"):
        (rootfs / name).write_text("")
    for name in ("var/cache/apt", "var/lib/apt/lists"):
        shutil.rmtree(rootfs / name, ignore_errors=True)
        (rootfs / name).mkdir(parents=True)
    (rootfs / "var/lib/apt/lists/partial").mkdir()


def build_base(work: Path, out: Path) -> None:
    rootfs = work / "rootfs"
    run(mmdebstrap_argv(rootfs), env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)})
    installed = installed_packages(rootfs)
    debs = [r for r in deb_records(rootfs) if installed.get(r["package"]) == r["version"]]
    missing = sorted(set(installed) - {r["package"] for r in debs})
    if missing:
        raise SystemExit(f"images: installed packages without their .deb: {missing}")
    (out.parent / PACKAGES_FILE).write_text(json.dumps(debs, indent=1, sort_keys=True) + "\n")
    drop_build_traces(rootfs)
    # Debian compiles the standard library in timestamp mode when the package is
    # installed; recompile by hash so the fixed layer mtimes cannot invalidate it.
    compile_bytecode(
        ["chroot", str(rootfs), "/usr/bin/python3"],
        rootfs,
        f"/usr/lib/python{PYTHON}",
        "/usr/lib/python3/dist-packages",
    )
    pack(rootfs, out, root_owned=False)


def prune_docs(rootfs: Path) -> None:
    """What DPKG_EXCLUDES leaves out of the native layer (dpkg does not run when extracting)."""
    share = rootfs / "usr/share"
    for name in ("man", "info"):
        shutil.rmtree(share / name, ignore_errors=True)
    for entry in (share / "locale").glob("*"):
        if entry.name != "locale.alias":
            entry.unlink() if not entry.is_dir() else shutil.rmtree(entry)
    for pkg in (share / "doc").glob("*"):
        for entry in pkg.iterdir() if pkg.is_dir() and not pkg.is_symlink() else ():
            if entry.name != "copyright":
                entry.unlink() if not entry.is_dir() or entry.is_symlink() else shutil.rmtree(entry)


def build_foreign_base(arch: str, native: Path, work: Path, out: Path) -> None:
    """ARCH's Debian layer: the packages of the native layer (NATIVE's packages.json),
    extracted for ARCH; what their maintainer scripts would have done that the
    images rely on is done here (users, dpkg's database, bytecode)."""
    packages = sorted(r["package"] for r in json.loads(native.read_text("utf-8")))
    rootfs = work / "rootfs"
    run(foreign_argv(rootfs, arch, packages), env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)})
    debs = deb_records(rootfs)
    got = {r["package"] for r in debs}
    if not set(packages) <= got:
        raise SystemExit(f"images: {arch} lacks {sorted(set(packages) - got)}")
    (out.parent / PACKAGES_FILE).write_text(json.dumps(debs, indent=1, sort_keys=True) + "\n")
    # base-passwd's postinst: the system users and groups from its master files.
    for name in ("passwd", "group"):
        shutil.copyfile(rootfs / f"usr/share/base-passwd/{name}.master", rootfs / f"etc/{name}")
    # dpkg's database, so that dpkg and scanners see the packages; "unpacked" is the
    # truth: their files are in place, their maintainer scripts never ran.
    status = rootfs / "var/lib/dpkg/status"
    paragraphs = []
    for deb in sorted((rootfs / "var/cache/apt/archives").glob("*.deb")):
        control = run(["dpkg-deb", "--field", str(deb)]).rstrip("\n").splitlines()
        paragraphs.append("\n".join([control[0], "Status: install ok unpacked", *control[1:]]))
    status.write_text("\n\n".join(paragraphs) + "\n")
    (rootfs / "var/log/dpkg.log").unlink(missing_ok=True)
    prune_docs(rootfs)
    drop_build_traces(rootfs)
    # The same Python version's bytecode, compiled by the build host (bytecode is
    # architecture-free): the image's interpreter cannot run here.
    compile_bytecode(
        [host_python()],
        rootfs,
        *(str(rootfs / d) for d in (f"usr/lib/python{PYTHON}", "usr/lib/python3/dist-packages")),
    )
    pack(rootfs, out, root_owned=False)


def host_python() -> str:
    """An interpreter of the image's Python minor version on the build host."""
    debian = Path(f"/usr/bin/python{PYTHON}")
    if debian.is_file():
        return str(debian)
    if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON:
        raise SystemExit(f"images: needs Python {PYTHON} on the build host")
    return sys.executable


def pip_install(*args: str) -> None:
    run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args])


def image_wheels(arch: str = "amd64") -> list[str]:
    """pip options that pick wheels for the image's Python and platform, not the build host's."""
    return [
        "--only-binary=:all:",
        *(f"--platform={p}" for p in platforms(arch)),
        f"--python-version={PYTHON}",
        "--implementation=cp",
        f"--abi=cp{PYTHON.replace('.', '')}",
    ]


def wheel_records(report: Path) -> list[dict[str, str]]:
    """pip's installation report, reduced to what the SBOM lists of each wheel."""
    return [
        {
            "name": item["metadata"]["name"],
            "version": item["metadata"]["version"],
            "file": item["download_info"]["url"].rsplit("/", 1)[-1],
            "sha256": item["download_info"]["archive_info"]["hashes"]["sha256"],
        }
        for item in sorted(
            json.loads(report.read_text("utf-8"))["install"],
            key=lambda i: str(i["metadata"]["name"]).lower(),
        )
    ]


def build_deps(work: Path, out: Path, arch: str = "amd64") -> None:
    layer = work / "layer"
    site = layer / SITE_PACKAGES.lstrip("/")
    report = work / "report.json"
    pip_install(
        "--no-deps",
        "--require-hashes",
        "--no-compile",
        *image_wheels(arch),
        f"--report={report}",
        f"--target={site}",
        f"--requirement={LOCKS[arch]}",
    )
    wheels = wheel_records(report)
    (out.parent / WHEELS_FILE).write_text(json.dumps(wheels, indent=1, sort_keys=True) + "\n")
    # Console scripts written by pip point at the build host's interpreter.
    shutil.rmtree(site / "bin", ignore_errors=True)
    venv = layer / VENV.lstrip("/")
    (venv / "bin").mkdir()
    (venv / "bin/python3").symlink_to("/usr/bin/python3")
    (venv / "bin/python").symlink_to("python3")
    (venv / "lib64").symlink_to("lib")
    (venv / "pyvenv.cfg").write_text(
        f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {PYTHON}\n"
    )
    compile_bytecode([sys.executable], layer, str(site))
    pack(layer, out, root_owned=True)


def build_deps_for(arch: str, work: Path, out: Path) -> None:
    build_deps(work, out, arch)


def entry_point_script(target: str) -> str:
    module, _, func = target.partition(":")
    return (
        f"#!{VENV}/bin/python3\n"
        "import sys\n"
        f"from {module} import {func}\n"
        "if __name__ == '__main__':\n"
        f"    sys.exit({func}())\n"
    )


def build_app(work: Path, out: Path) -> None:
    layer = work / "layer"
    site = layer / SITE_PACKAGES.lstrip("/")
    src = work / "src"
    src.mkdir()
    for name in (*project_sources(), *PROJECT_FILES):
        dest = src / name
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest)
    pip_install("--no-deps", "--no-compile", f"--target={site}", str(src))
    # direct_url.json records the temporary source directory: drop it, and its RECORD line.
    for record in site.glob("*.dist-info/RECORD"):
        direct_url = record.parent / "direct_url.json"
        direct_url.unlink(missing_ok=True)
        lines = record.read_text("utf-8").splitlines(keepends=True)
        record.write_text(
            "".join(
                ln for ln in lines if not ln.startswith(f"{record.parent.name}/direct_url.json,")
            )
        )
    scripts = tomllib.loads((src / "pyproject.toml").read_text("utf-8"))["project"]["scripts"]
    bindir = layer / VENV.lstrip("/") / "bin"
    bindir.mkdir(parents=True)
    for name, target in sorted(scripts.items()):
        path = bindir / name
        path.write_text(entry_point_script(target))
        path.chmod(0o755)
    compile_bytecode([sys.executable], layer, str(site))
    pack(layer, out, root_owned=True)


def build_pause(work: Path, out: Path) -> None:
    layer = work / "layer"
    layer.mkdir()
    binary = layer / "pause"
    run(["gcc", *pause_cflags(), "-o", str(binary), str(pause_source())])
    run(["strip", str(binary)])
    pack(layer, out, root_owned=True)


def kube_version() -> str:
    env = (REPO / "hack/tools/kube/build.env").read_text("utf-8")
    match = re.search(r"^VERSION=(\S+)$", env, re.M)
    if not match:
        raise SystemExit("images: no VERSION in hack/tools/kube/build.env")
    return match.group(1)


def pause_source() -> Path:
    """build/pause/linux/pause.c of the pinned k8s.io/kubernetes module (downloaded if needed)."""
    out = run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{kube_version()}"],
        cwd=tempfile.gettempdir(),
        env={**os.environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "on"},
    )
    return Path(json.loads(out)["Dir"]) / "build/pause/linux/pause.c"


def pause_cflags() -> list[str]:
    return ["-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{PAUSE_VERSION}-{kube_version()}"]


# --- OCI -------------------------------------------------------------------


def umoci_config(layout: Path, tag: str, *args: str, new_tag: str = "") -> None:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH))
    argv = ["umoci", "config", "--no-history", f"--created={created}", "--image", f"{layout}:{tag}"]
    run([*argv, *(["--tag", new_tag] if new_tag else []), *args])


def oci_layout(
    layers: list[Path], images: dict[str, list[str]], layout: Path, arch: str = "amd64"
) -> list[dict[str, object]]:
    """An OCI layout at LAYOUT: one ARCH manifest per entry of IMAGES (tag -> umoci
    config arguments) over the same LAYERS. Returns the index entries."""
    run(["umoci", "init", "--layout", str(layout)])
    run(["umoci", "new", "--image", f"{layout}:base"])
    for layer in layers:
        run(["umoci", "raw", "add-layer", "--no-history", "--image", f"{layout}:base", str(layer)])
    platform = [] if arch == "amd64" else [f"--architecture={arch}"]
    for tag, args in images.items():
        umoci_config(layout, "base", *args, *platform, new_tag=tag)
    run(["umoci", "rm", "--image", f"{layout}:base"])
    run(["umoci", "gc", "--layout", str(layout)])
    entries: list[dict[str, object]] = json.loads((layout / "index.json").read_text("utf-8"))[
        "manifests"
    ]
    for entry in entries:
        entry["platform"] = {"architecture": arch, "os": "linux"}
    return entries


def write_index(layout: Path, entries: list[dict[str, object]]) -> None:
    index = {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": entries}
    (layout / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def oci_archive(
    layers: list[Path], images: dict[str, list[str]], names: dict[str, str], out: Path
) -> None:
    """An OCI layout tarball: one manifest per entry of IMAGES (tag -> umoci config
    arguments) over the same LAYERS, stored under NAMES (tag -> image reference)."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        layout = Path(tmp) / "layout"
        entries = oci_layout(layers, images, layout)
        for entry in entries:
            annotations = entry["annotations"]
            assert isinstance(annotations, dict)
            name = names[annotations["org.opencontainers.image.ref.name"]]
            entry["annotations"] = {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name,
            }
        entries.sort(key=lambda e: str(e["annotations"]))
        write_index(layout, entries)
        pack(layout, out, root_owned=True)


INDEX_TYPE = "application/vnd.oci.image.index.v1+json"


def blob_path(layout: Path, digest_: str) -> Path:
    algorithm, _, hexdigest = digest_.partition(":")
    return layout / "blobs" / algorithm / hexdigest


def multiarch_archive(
    platform_layers: dict[str, list[Path]], images: dict[str, list[str]], out: Path
) -> None:
    """An OCI layout tarball whose index names, for each entry of IMAGES, an image
    index (ref name: the component) over one manifest per platform of PLATFORM_LAYERS.
    `crane push` of a layout holding one such entry pushes the multi-arch image."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        layout = Path(tmp) / "layout"
        per_arch = {}
        for arch, layers in platform_layers.items():
            part = Path(tmp) / arch
            per_arch[arch] = oci_layout(layers, images, part, arch)
            if not layout.exists():
                run(["umoci", "init", "--layout", str(layout)])
            for blob in (part / "blobs/sha256").iterdir():
                target = layout / "blobs/sha256" / blob.name
                if not target.exists():
                    os.link(blob, target)
        entries: list[dict[str, object]] = []
        for component in images:
            manifests = []
            for arch_entries in per_arch.values():
                (entry,) = (
                    e
                    for e in arch_entries
                    if e["annotations"] == {"org.opencontainers.image.ref.name": component}
                )
                manifests.append({k: v for k, v in entry.items() if k != "annotations"})
            body = (
                json.dumps(
                    {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": manifests},
                    indent=2,
                    sort_keys=True,
                )
                + "\n"
            ).encode()
            sha = hashlib.sha256(body).hexdigest()
            blob_path(layout, f"sha256:{sha}").write_bytes(body)
            entries.append(
                {
                    "mediaType": INDEX_TYPE,
                    "digest": f"sha256:{sha}",
                    "size": len(body),
                    "annotations": {"org.opencontainers.image.ref.name": component},
                }
            )
        write_index(layout, entries)
        pack(layout, out, root_owned=True)


def component_config(c: Component) -> list[str]:
    args = [f"--config.user={RUN_AS}", "--config.workingdir=/", *(f"--config.env={e}" for e in ENV)]
    args += [f"--config.entrypoint={VENV}/bin/{c.script}"]
    args += [f"--config.cmd={a}" for a in c.cmd]
    args += [f"--config.exposedports={p}/tcp" for p in c.ports]
    return args


# --- SBOM ------------------------------------------------------------------


def write_sbom(arch: str, debian: Path, wheels: Path, out: Path) -> None:
    """CycloneDX 1.6 JSON of one platform's images, from what the builder installed:
    the Debian packages (DEBIAN: packages.json of that Debian layer, each .deb's
    sha256), the wheels (WHEELS: pip's report, each wheel's sha256) and the project.
    Validated against the CycloneDX schema before it is written."""
    import uuid
    from datetime import UTC, datetime

    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component as BomComponent
    from cyclonedx.model.component import ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from packageurl import PackageURL

    def sha256(value: str) -> list[HashType]:
        return [HashType(alg=HashAlgorithm.SHA_256, content=value)]

    version = project_version()
    debs = json.loads(debian.read_text("utf-8"))
    pips = json.loads(wheels.read_text("utf-8"))
    project = BomComponent(
        type=ComponentType.APPLICATION,
        name="qsys-operator",
        version=version,
        bom_ref=f"qsys-operator@{version}",
        purl=PackageURL("pypi", name="qsys-operator", version=version),
        description="operator, gateway and Core simulator images (one root filesystem)",
    )
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"qsys-operator/{version}/{arch}"))
    bom.metadata.timestamp = datetime.fromtimestamp(EPOCH, tz=UTC)
    bom.metadata.component = project
    bom.metadata.properties.add(Property(name="qsys:platform", value=f"linux/{arch}"))
    packages = [
        (
            PackageURL(
                "deb",
                namespace="debian",
                name=d["package"],
                version=d["version"],
                qualifiers={"arch": d["architecture"], "distro": "debian-12"},
            ),
            d["package"],
            d,
        )
        for d in debs
    ]
    packages += [
        (PackageURL("pypi", name=w["name"].lower(), version=w["version"]), w["name"], w)
        for w in pips
    ]
    for purl, name, record in packages:
        comp = BomComponent(
            type=ComponentType.LIBRARY,
            name=name,
            version=record["version"],
            purl=purl,
            bom_ref=str(purl),
            hashes=sha256(record["sha256"]),
            properties=[Property(name="qsys:file", value=record["file"])],
        )
        bom.components.add(comp)
        bom.register_dependency(project, [comp])
    text = JsonV1Dot6(bom).output_as_string(indent=1)
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise SystemExit(f"images: the {arch} SBOM is not valid CycloneDX 1.6: {error}")
    out.write_text(text + "\n")


def sbom_build(arch: str, debian: Path, wheels: Path, _work: Path, out: Path) -> None:
    write_sbom(arch, debian, wheels, out)


# --- steps and keys --------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    key: str
    file: str
    extra: tuple[str, ...] = ()
    """Further files the build writes beside FILE."""

    @property
    def path(self) -> Path:
        return cache_root() / f"{self.name}-{self.key}" / self.file

    def beside(self, name: str) -> Path:
        return self.path.parent / name


def code(*funcs: Callable[..., object]) -> str:
    return "".join(inspect.getsource(f) for f in funcs)


def apt_sources() -> str:
    """The machine's apt sources as configured (cheap to read; `apt-get indextargets`,
    which resolves them, takes seconds)."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    return "".join(f"{f}\n{f.read_text('utf-8', 'replace')}" for f in files if f.is_file())


def base_step() -> Step:
    key = digest(
        apt_sources(),
        code(
            mmdebstrap_argv,
            debian_mirrors,
            build_base,
            pack,
            compile_bytecode,
            deb_records,
            installed_packages,
            drop_build_traces,
        ),
        json.dumps([SUITE, DEBIAN_PACKAGES, EPOCH, DPKG_EXCLUDES, KEEP_DEBS]),
    )
    return Step("debian", key, "layer.tar", (PACKAGES_FILE,))


def foreign_base_step(native: Step, arch: str) -> Step:
    key = digest(
        native.key,
        arch,
        code(foreign_argv, build_foreign_base, prune_docs, host_python),
    )
    return Step(f"debian-{arch}", key, "layer.tar", (PACKAGES_FILE,))


def deps_step(base: Step, arch: str = "amd64") -> Step:
    key = digest(
        base.key,
        LOCKS[arch].read_bytes(),
        json.dumps(platforms(arch)),
        code(pip_install, image_wheels, build_deps, wheel_records),
    )
    return Step("pydeps" if arch == "amd64" else f"pydeps-{arch}", key, "layer.tar", (WHEELS_FILE,))


def app_step(deps: Step) -> Step:
    sources = tree_digest([REPO / p for p in (*project_sources(), *PROJECT_FILES)])
    return Step(
        "app",
        digest(deps.key, sources, code(pip_install, build_app, entry_point_script)),
        "layer.tar",
    )


def qsys_step(layers: list[Step]) -> Step:
    images = json.dumps({c.name: component_config(c) for c in COMPONENTS})
    key = digest(
        *(s.key for s in layers), images, json.dumps(image_names()), code(oci_archive, oci_layout)
    )
    return Step("qsys", key, "images.tar")


def multiarch_step(layers: dict[str, list[Step]]) -> Step:
    images = json.dumps({c.name: component_config(c) for c in COMPONENTS})
    keys = json.dumps({arch: [s.key for s in steps] for arch, steps in layers.items()})
    return Step(
        "multiarch", digest(keys, images, code(multiarch_archive, oci_layout)), "images.tar"
    )


def sbom_step(arch: str, base: Step, deps: Step, app: Step) -> Step:
    key = digest(arch, base.key, deps.key, app.key, project_version(), code(write_sbom))
    return Step(f"sbom-{arch}", key, "sbom.cdx.json")


def pause_layer_step() -> Step:
    key = digest(
        pause_source().read_bytes(),
        json.dumps(pause_cflags()),
        run(["gcc", "--version"]),
        run(["dpkg-query", "-W", "-f=${Version}", "libc6-dev"]),
        code(build_pause),
    )
    return Step("pause-layer", key, "layer.tar")


def pause_step(layer: Step) -> Step:
    return Step(
        "pause", digest(layer.key, PAUSE_NAME, PAUSE_RUN_AS, code(oci_archive)), "pause.tar"
    )


def ensure(step: Step, build: Callable[[Path, Path], None]) -> Path:
    """STEP's output, built by BUILD(workdir, output) unless already in the cache."""
    if step.path.is_file():
        return step.path
    start = time.monotonic()
    log(f"building {step.name} ({step.path.parent})")
    cache_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_root(), prefix=f".{step.name}.") as tmp:
        outdir = Path(tmp) / "out"
        outdir.mkdir()
        partial = outdir / step.file
        build(Path(tmp), partial)
        step.path.parent.mkdir(exist_ok=True)
        for name in step.extra:
            (outdir / name).rename(step.beside(name))
        partial.rename(step.path)
    size = step.path.stat().st_size >> 20
    log(f"built {step.name} in {time.monotonic() - start:.0f}s ({size} MiB)")
    prune(step)
    return step.path


def prune(step: Step, keep: int = KEEP) -> None:
    """Drop all but the KEEP newest outputs of STEP (other worktrees may use the older ones)."""
    outputs = [
        p
        for p in cache_root().glob(f"{step.name}-*")
        if re.fullmatch(r"[0-9a-f]{12}", p.name[len(step.name) + 1 :])
    ]
    outputs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in outputs[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def qsys_steps() -> tuple[Step, Step, Step, Step]:
    base = base_step()
    deps = deps_step(base)
    app = app_step(deps)
    return base, deps, app, qsys_step([base, deps, app])


@dataclass(frozen=True)
class Release:
    """What `build --release` makes: the multi-arch layout and one SBOM per platform."""

    layout: Step
    sboms: dict[str, Step]
    layers: dict[str, list[Step]]


def release_steps(native: tuple[Step, Step, Step, Step] | None = None) -> Release:
    """NATIVE: the native steps already computed (the keys of a build in progress stay
    those it started with, whatever changes in the checkout meanwhile)."""
    base, deps, app, _ = native or qsys_steps()
    layers = {"amd64": [base, deps, app]}
    for arch in ARCHES[1:]:
        foreign = foreign_base_step(base, arch)
        layers[arch] = [foreign, deps_step(foreign, arch), app]
    sboms = {arch: sbom_step(arch, *steps) for arch, steps in layers.items()}
    return Release(multiarch_step(layers), sboms, layers)


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("images: needs root (mmdebstrap --mode=root, chroot, device-free layers)")


def build_all(native: tuple[Step, Step, Step, Step] | None = None) -> list[Path]:
    require_root()
    base, deps, app, qsys = native or qsys_steps()
    ensure(base, build_base)
    ensure(deps, build_deps)
    ensure(app, build_app)
    names = image_names()
    ensure(
        qsys,
        lambda _work, out: oci_archive(
            [base.path, deps.path, app.path],
            {c.name: component_config(c) for c in COMPONENTS},
            names,
            out,
        ),
    )
    return [qsys.path, build_pause_image()]


def build_pause_image() -> Path:
    """The pause image's tarball (also in the kind node image, hack/kind_node.py)."""
    pause_layer = pause_layer_step()
    pause = pause_step(pause_layer)
    ensure(pause_layer, build_pause)
    pause_config = [f"--config.user={PAUSE_RUN_AS}", "--config.entrypoint=/pause"]
    return ensure(
        pause,
        lambda _work, out: oci_archive(
            [pause_layer.path], {"pause": pause_config}, {"pause": PAUSE_NAME}, out
        ),
    )


def build_release() -> Release:
    """The multi-arch images (every platform of ARCHES) and their SBOMs."""
    native_steps = qsys_steps()
    build_all(native_steps)
    rel = release_steps(native_steps)
    native = rel.layers["amd64"][0].beside(PACKAGES_FILE)
    for arch, (foreign, deps, _app) in rel.layers.items():
        if arch == "amd64":
            continue
        ensure(foreign, functools.partial(build_foreign_base, arch, native))
        ensure(deps, functools.partial(build_deps_for, arch))
    for arch, (debian, deps, _app) in rel.layers.items():
        ensure(
            rel.sboms[arch],
            functools.partial(
                sbom_build, arch, debian.beside(PACKAGES_FILE), deps.beside(WHEELS_FILE)
            ),
        )
    images = {c.name: component_config(c) for c in COMPONENTS}
    ensure(
        rel.layout,
        lambda _work, out: multiarch_archive(
            {arch: [s.path for s in steps] for arch, steps in rel.layers.items()}, images, out
        ),
    )
    return rel


def paths() -> list[Path]:
    return [qsys_steps()[-1].path, pause_step(pause_layer_step()).path]


def pin_lines(arch: str, installs: list[dict[str, Any]]) -> str:
    lines = [
        "# Pinned dependencies of the images built by hack/images.py"
        f" (Linux {WHEEL_MACHINE[arch]}, CPython 3.11).",
        "# Generated by `python hack/images.py lock` from pyproject.toml; do not edit.",
    ]
    for item in sorted(installs, key=lambda i: i["metadata"]["name"].lower()):
        sha = item["download_info"]["archive_info"]["hashes"]["sha256"]
        lines.append(
            f"{item['metadata']['name']}=={item['metadata']['version']} --hash=sha256:{sha}"
        )
    return "\n".join(lines) + "\n"


def resolve(arch: str, *requirements: str, no_deps: bool = False) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip_install(
            "--dry-run",
            "--ignore-installed",
            *(["--no-deps"] if no_deps else []),
            f"--report={report}",
            *image_wheels(arch),
            f"--target={tmp}/target",
            *requirements,
        )
        installs: list[dict[str, Any]] = json.loads(report.read_text("utf-8"))["install"]
    return installs


def lock(platforms_only: bool = False) -> None:
    """Resolve pyproject's dependencies for the native image and pin them with hashes;
    then pin the same versions for every other platform (their wheels' hashes differ),
    so that each platform of a multi-arch image holds the same package set."""
    if not platforms_only:
        deps = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]
        LOCK.write_text(pin_lines("amd64", resolve("amd64", *deps["dependencies"])))
    pins = [ln.split()[0] for ln in LOCK.read_text("utf-8").splitlines() if "==" in ln]
    for arch in ARCHES[1:]:
        LOCKS[arch].write_text(pin_lines(arch, resolve(arch, *pins, no_deps=True)))


def release_paths() -> dict[str, object]:
    rel = release_steps()
    return {
        "layout": str(rel.layout.path),
        "sboms": {arch: str(step.path) for arch, step in rel.sboms.items()},
        "images": {c.name: c.name for c in COMPONENTS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "command",
        choices=["build", "paths", "names", "lock", "lock-platforms", "release", "release-paths"],
    )
    command = parser.parse_args().command
    if command == "build":
        build_all()
    elif command == "release":
        build_release()
        print(json.dumps(release_paths(), indent=2))
    elif command == "release-paths":
        print(json.dumps(release_paths(), indent=2))
    elif command == "paths":
        print("\n".join(str(p) for p in paths()))
    elif command == "names":
        print("\n".join([*image_names().values(), PAUSE_NAME]))
    elif command == "lock-platforms":
        lock(platforms_only=True)
    else:
        lock()


if __name__ == "__main__":
    main()
