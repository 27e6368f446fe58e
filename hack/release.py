"""Publishes a release to an OCI registry (docs/install.md, `make release`).

    python hack/release.py --registry HOST[:PORT]/PATH --key cosign.key [--no-tlog] [--out FILE]

1. builds the multi-arch (linux/amd64, linux/arm64) images and their CycloneDX SBOMs
   (`hack/images.py release`);
2. pushes the operator, gateway and core-sim images, each one image index, to
   REGISTRY/NAME:VERSION (crane) and signs each index and its platform manifests (cosign);
3. attaches each platform's SBOM as a signed CycloneDX attestation (`cosign attest`);
4. packages the chart with its image repositories set to REGISTRY, pushes it to
   oci://REGISTRY/qsys-operator:VERSION (helm) and signs it.

Credentials and trust come from the environment, as the tools read them: DOCKER_CONFIG
(crane, cosign) and HELM_REGISTRY_CONFIG (helm) for the registry login, SSL_CERT_FILE
for a private CA, COSIGN_PASSWORD for the key. Prints (and writes to --out) what was
published: every reference with its digest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "qsys-operator"
# The chart's default image repositories, replaced by the registry's in the pushed chart.
DEFAULT_REPOSITORY = "ghcr.io/qsys-operator"
REGISTRY_RE = re.compile(r"^[a-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9._-]+)*$")


def log(msg: str) -> None:
    print(f"release: {msg}", file=sys.stderr, flush=True)


def run(argv: list[str | Path], *, secret: bool = False) -> str:
    """Run a tool; on failure its stderr (never the environment) is reported."""
    args = [str(a) for a in argv]
    log(" ".join(args[:2] + ([a for a in args[2:] if not a.startswith("-")][-1:])))
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = "(output withheld)" if secret else (proc.stderr or proc.stdout)[-3000:]
        raise SystemExit(f"release: {Path(args[0]).name} {args[1]} failed: {detail}")
    return proc.stdout + proc.stderr


def tool(group: str, name: str) -> Path:
    out = subprocess.run(
        ["bash", str(REPO / "hack/tools/build.sh"), "--dir", group],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = Path(out) / name
    if not path.is_file():
        raise SystemExit(f"release: {name} not built: bash hack/tools/build.sh {group}")
    return path


def chart_version() -> str:
    """The chart's version, which must be the Python package's: the images are tagged
    with it and the chart's appVersion becomes it."""
    text = (CHART / "Chart.yaml").read_text("utf-8")
    match = re.search(r"^version:\s*\"?([^\"\s]+)", text, re.M)
    if not match:
        raise SystemExit("release: no version in Chart.yaml")
    package = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]["version"]
    if match.group(1) != package:
        raise SystemExit(
            f"release: Chart.yaml version {match.group(1)} differs from pyproject.toml's {package}"
        )
    return match.group(1)


def build_images() -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(REPO / "hack/images.py"), "release"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    ).stdout
    paths: dict[str, Any] = json.loads(out)
    return paths


def component_layouts(archive: Path, work: Path) -> dict[str, Path]:
    """One OCI layout directory per image index of ARCHIVE (crane pushes a layout whose
    index holds one entry); they share the unpacked blobs."""
    shared = work / "layout"
    with tarfile.open(archive) as tar:
        tar.extractall(shared, filter="data")
    index = json.loads((shared / "index.json").read_text("utf-8"))
    layouts = {}
    for entry in index["manifests"]:
        name = entry["annotations"]["org.opencontainers.image.ref.name"]
        layout = work / name
        layout.mkdir()
        (layout / "blobs").symlink_to(shared / "blobs")
        shutil.copy(shared / "oci-layout", layout / "oci-layout")
        single = {**index, "manifests": [entry]}
        (layout / "index.json").write_text(json.dumps(single))
        layouts[name] = layout
    return layouts


def platform_digests(layout: Path) -> dict[str, str]:
    """linux/ARCH -> manifest digest of the one image index in LAYOUT."""
    (entry,) = json.loads((layout / "index.json").read_text("utf-8"))["manifests"]
    algorithm, _, hexdigest = entry["digest"].partition(":")
    index = json.loads((layout / "blobs" / algorithm / hexdigest).read_text("utf-8"))
    return {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}


def pushed_digest(output: str) -> str:
    match = re.search(r"sha256:[0-9a-f]{64}", output)
    if not match:
        raise SystemExit(f"release: no digest in: {output[-500:]}")
    return match.group(0)


def package_chart(registry: str, version: str, work: Path, helm: Path) -> Path:
    """The chart with its default image repositories in REGISTRY."""
    src = work / "chart" / CHART.name
    shutil.copytree(CHART, src)
    values = src / "values.yaml"
    text = values.read_text("utf-8")
    replaced = text.replace(f"repository: {DEFAULT_REPOSITORY}/", f"repository: {registry}/")
    if replaced.count(f"repository: {registry}/") < 2:
        raise SystemExit("release: values.yaml has no image repositories to point at the registry")
    values.write_text(replaced)
    run([helm, "package", src, "--version", version, "--app-version", version, "-d", work])
    return work / f"{CHART.name}-{version}.tgz"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--registry", required=True, help="HOST[:PORT]/PATH, no scheme")
    parser.add_argument("--key", required=True, type=Path, help="cosign private key")
    parser.add_argument(
        "--no-tlog",
        action="store_true",
        help="do not upload signatures to the Rekor transparency log (offline registries)",
    )
    parser.add_argument("--out", type=Path, help="also write the published references here")
    opts = parser.parse_args()
    registry = opts.registry.removeprefix("oci://").rstrip("/")
    if not REGISTRY_RE.match(registry):
        raise SystemExit(f"release: --registry must look like host[:port]/path, got {registry!r}")
    if not opts.key.is_file():
        raise SystemExit(f"release: no cosign key at {opts.key}")
    if "COSIGN_PASSWORD" not in os.environ:
        raise SystemExit("release: set COSIGN_PASSWORD (the key's password, may be empty)")
    crane, cosign, helm = tool("cosign", "crane"), tool("cosign", "cosign"), tool("helm", "helm")
    tlog = ["--tlog-upload=false"] if opts.no_tlog else []
    version = chart_version()
    paths = build_images()
    published: dict[str, Any] = {"version": version, "registry": registry, "images": {}}
    with tempfile.TemporaryDirectory(prefix="qsys-release-") as tmp:
        work = Path(tmp)
        for name, layout in component_layouts(Path(paths["layout"]), work).items():
            ref = f"{registry}/{name}"
            digest = pushed_digest(run([crane, "push", layout, f"{ref}:{version}"]))
            run([cosign, "sign", "--key", opts.key, "--recursive", "-y", *tlog, f"{ref}@{digest}"])
            platforms = platform_digests(layout)
            for arch, manifest in platforms.items():
                sbom = paths["sboms"][arch]
                run(
                    [
                        cosign,
                        "attest",
                        "--key",
                        opts.key,
                        "--type",
                        "cyclonedx",
                        "--predicate",
                        sbom,
                        "-y",
                        *tlog,
                        f"{ref}@{manifest}",
                    ]
                )
            published["images"][name] = {
                "ref": f"{ref}:{version}",
                "digest": digest,
                "platforms": {f"linux/{a}": d for a, d in platforms.items()},
            }
        chart = package_chart(registry, version, work, helm)
        out = run([helm, "push", chart, f"oci://{registry}"])
        chart_digest = pushed_digest(out)
        chart_ref = f"{registry}/{CHART.name}"
        run([cosign, "sign", "--key", opts.key, "-y", *tlog, f"{chart_ref}@{chart_digest}"])
        published["chart"] = {
            "ref": f"oci://{chart_ref}",
            "version": version,
            "digest": chart_digest,
        }
    text = json.dumps(published, indent=2, sort_keys=True)
    if opts.out:
        opts.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
