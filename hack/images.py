"""Builds the container images without Docker (docs/images.md).

    python hack/images.py build    build what is missing (a no-op while the inputs are unchanged)
    python hack/images.py paths    the OCI tarballs, one a line (built or not)
    python hack/images.py names    the image names the tarballs carry, one a line
    python hack/images.py lock     re-pin hack/images/requirements.txt from pyproject.toml

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
# glibc 2.36 (bookworm) runs every manylinux wheel up to 2_36.
PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
PAUSE_VERSION = "3.10.2"  # PauseVersion of the pinned Kubernetes release
PAUSE_RUN_AS = "65535:65535"  # as the upstream image
# Outputs kept per step: the current one and a few for other worktrees of the same clone.
KEEP = 3


@dataclass(frozen=True)
class Component:
    """One image of the project: an entry point of pyproject.toml and what the Dockerfile sets."""

    name: str  # image repository's last element, as the chart names it
    script: str
    cmd: tuple[str, ...]
    ports: tuple[int, ...]


# The same as operator/Dockerfile and gateway/Dockerfile (tests/integration/test_images.py).
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


def mmdebstrap_argv(target: Path) -> list[str]:
    return [
        "mmdebstrap",
        "--quiet",
        "--mode=root",
        "--variant=minbase",
        f"--include={','.join(DEBIAN_PACKAGES)}",
        *(
            f"--dpkgopt={opt}"
            for opt in (
                "path-exclude=/usr/share/man/*",
                "path-exclude=/usr/share/info/*",
                "path-exclude=/usr/share/locale/*",
                "path-include=/usr/share/locale/locale.alias",
                "path-exclude=/usr/share/doc/*",
                "path-include=/usr/share/doc/*/copyright",
            )
        ),
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


def build_base(work: Path, out: Path) -> None:
    rootfs = work / "rootfs"
    run(mmdebstrap_argv(rootfs), env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)})
    # The runtime provides /dev, /etc/resolv.conf and /etc/hostname; the image
    # carries no device nodes and no trace of the build host.
    for entry in (rootfs / "dev").iterdir():
        entry.unlink() if not entry.is_dir() or entry.is_symlink() else shutil.rmtree(entry)
    for name in ("etc/resolv.conf", "etc/hostname"):
        (rootfs / name).write_text("")
    shutil.rmtree(rootfs / "var/cache/apt", ignore_errors=True)
    (rootfs / "var/cache/apt").mkdir()
    # Debian compiles the standard library in timestamp mode when the package is
    # installed; recompile by hash so the fixed layer mtimes cannot invalidate it.
    compile_bytecode(
        ["chroot", str(rootfs), "/usr/bin/python3"],
        rootfs,
        f"/usr/lib/python{PYTHON}",
        "/usr/lib/python3/dist-packages",
    )
    pack(rootfs, out, root_owned=False)


def pip_install(*args: str) -> None:
    run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args])


def image_wheels() -> list[str]:
    """pip options that pick wheels for the image's Python and platform, not the build host's."""
    return [
        "--only-binary=:all:",
        *(f"--platform={p}" for p in PLATFORMS),
        f"--python-version={PYTHON}",
        "--implementation=cp",
        f"--abi=cp{PYTHON.replace('.', '')}",
    ]


def build_deps(work: Path, out: Path) -> None:
    layer = work / "layer"
    site = layer / SITE_PACKAGES.lstrip("/")
    pip_install(
        "--no-deps",
        "--require-hashes",
        "--no-compile",
        *image_wheels(),
        f"--target={site}",
        f"--requirement={LOCK}",
    )
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


def oci_archive(
    layers: list[Path], images: dict[str, list[str]], names: dict[str, str], out: Path
) -> None:
    """An OCI layout tarball: one manifest per entry of IMAGES (tag -> umoci config
    arguments) over the same LAYERS, stored under NAMES (tag -> image reference)."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        layout = Path(tmp) / "layout"
        run(["umoci", "init", "--layout", str(layout)])
        run(["umoci", "new", "--image", f"{layout}:base"])
        for layer in layers:
            run(
                [
                    "umoci",
                    "raw",
                    "add-layer",
                    "--no-history",
                    "--image",
                    f"{layout}:base",
                    str(layer),
                ]
            )
        for tag, args in images.items():
            umoci_config(layout, "base", *args, new_tag=tag)
        run(["umoci", "rm", "--image", f"{layout}:base"])
        run(["umoci", "gc", "--layout", str(layout)])
        index_path = layout / "index.json"
        index = json.loads(index_path.read_text("utf-8"))
        for entry in index["manifests"]:
            name = names[entry["annotations"]["org.opencontainers.image.ref.name"]]
            entry["annotations"] = {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name,
            }
            entry["platform"] = {"architecture": "amd64", "os": "linux"}
        index["manifests"].sort(key=lambda e: e["annotations"]["io.containerd.image.name"])
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        pack(layout, out, root_owned=True)


def component_config(c: Component) -> list[str]:
    args = [f"--config.user={RUN_AS}", "--config.workingdir=/", *(f"--config.env={e}" for e in ENV)]
    args += [f"--config.entrypoint={VENV}/bin/{c.script}"]
    args += [f"--config.cmd={a}" for a in c.cmd]
    args += [f"--config.exposedports={p}/tcp" for p in c.ports]
    return args


# --- steps and keys --------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    key: str
    file: str

    @property
    def path(self) -> Path:
        return cache_root() / f"{self.name}-{self.key}" / self.file


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
        code(mmdebstrap_argv, debian_mirrors, build_base, pack, compile_bytecode),
        json.dumps([SUITE, DEBIAN_PACKAGES, EPOCH]),
    )
    return Step("debian", key, "layer.tar")


def deps_step(base: Step) -> Step:
    key = digest(
        base.key,
        LOCK.read_bytes(),
        json.dumps(PLATFORMS),
        code(pip_install, image_wheels, build_deps),
    )
    return Step("pydeps", key, "layer.tar")


def app_step(deps: Step) -> Step:
    sources = tree_digest([REPO / p for p in (*project_sources(), *PROJECT_FILES)])
    return Step(
        "app",
        digest(deps.key, sources, code(pip_install, build_app, entry_point_script)),
        "layer.tar",
    )


def qsys_step(layers: list[Step]) -> Step:
    images = json.dumps({c.name: component_config(c) for c in COMPONENTS})
    key = digest(*(s.key for s in layers), images, json.dumps(image_names()), code(oci_archive))
    return Step("qsys", key, "images.tar")


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
        partial = Path(tmp) / step.file
        build(Path(tmp), partial)
        step.path.parent.mkdir(exist_ok=True)
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


def build_all() -> list[Path]:
    if os.geteuid() != 0:
        raise SystemExit("images: needs root (mmdebstrap --mode=root, chroot, device-free layers)")
    base, deps, app, qsys = qsys_steps()
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
    pause_layer = pause_layer_step()
    pause = pause_step(pause_layer)
    ensure(pause_layer, build_pause)
    pause_config = [f"--config.user={PAUSE_RUN_AS}", "--config.entrypoint=/pause"]
    ensure(
        pause,
        lambda _work, out: oci_archive(
            [pause_layer.path], {"pause": pause_config}, {"pause": PAUSE_NAME}, out
        ),
    )
    return [qsys.path, pause.path]


def paths() -> list[Path]:
    return [qsys_steps()[-1].path, pause_step(pause_layer_step()).path]


def lock() -> None:
    """Resolve pyproject's dependencies for the image's platform and pin them with hashes."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]["dependencies"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip_install(
            "--dry-run",
            "--ignore-installed",
            f"--report={report}",
            *image_wheels(),
            f"--target={tmp}/target",
            *deps,
        )
        installs = json.loads(report.read_text("utf-8"))["install"]
    lines = [
        "# Pinned dependencies of the images built by hack/images.py (Linux x86_64, CPython 3.11).",
        "# Generated by `python hack/images.py lock` from pyproject.toml; do not edit.",
    ]
    for item in sorted(installs, key=lambda i: i["metadata"]["name"].lower()):
        sha = item["download_info"]["archive_info"]["hashes"]["sha256"]
        lines.append(
            f"{item['metadata']['name']}=={item['metadata']['version']} --hash=sha256:{sha}"
        )
    LOCK.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["build", "paths", "names", "lock"])
    command = parser.parse_args().command
    if command == "build":
        build_all()
    elif command == "paths":
        print("\n".join(str(p) for p in paths()))
    elif command == "names":
        print("\n".join([*image_names().values(), PAUSE_NAME]))
    else:
        lock()


if __name__ == "__main__":
    main()
