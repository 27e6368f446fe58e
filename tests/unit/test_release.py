"""The release's pure parts: the SBOM writer (hack/images.py) and the release script's
layout handling and argument checks (hack/release.py). The real thing, pushed to a
registry and installed from it: tests/e2e/test_release_registry.py."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from unit_support import hack_script

REPO = Path(__file__).resolve().parents[2]


images = hack_script("images")
release = hack_script("release")

DEB = {
    "package": "python3.11-minimal",
    "version": "3.11.2-6+deb12u6",
    "architecture": "arm64",
    "sha256": "a" * 64,
    "file": "python3.11-minimal_3.11.2-6+deb12u6_arm64.deb",
}
WHEEL = {
    "name": "pydantic_core",
    "version": "2.41.5",
    "sha256": "b" * 64,
    "file": "pydantic_core-2.41.5-cp311-cp311-manylinux_2_17_aarch64.whl",
}


def test_sbom_lists_what_it_is_given_with_hashes_and_validates(tmp_path: Path) -> None:
    debs, wheels, out = tmp_path / "p.json", tmp_path / "w.json", tmp_path / "sbom.json"
    debs.write_text(json.dumps([DEB]))
    wheels.write_text(json.dumps([WHEEL]))
    images.write_sbom("arm64", debs, wheels, out)
    text = out.read_text("utf-8")
    # Imported here: jsonschema's import takes 1.2 s of every worker's collection.
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    sbom = json.loads(text)
    by_name = {c["name"]: c for c in sbom["components"]}
    deb = by_name["python3.11-minimal"]
    assert deb["purl"] == (
        "pkg:deb/debian/python3.11-minimal@3.11.2-6%2Bdeb12u6?arch=arm64&distro=debian-12"
    )
    assert deb["hashes"] == [{"alg": "SHA-256", "content": "a" * 64}]
    assert by_name["pydantic_core"]["purl"] == "pkg:pypi/pydantic-core@2.41.5"
    assert by_name["pydantic_core"]["hashes"][0]["content"] == "b" * 64
    assert sbom["metadata"]["component"]["name"] == "qsys-operator"
    # Reproducible: the same inputs give the same bytes.
    again = tmp_path / "again.json"
    images.write_sbom("arm64", debs, wheels, again)
    assert again.read_bytes() == out.read_bytes()


def test_sbom_refuses_a_malformed_hash(tmp_path: Path) -> None:
    debs, wheels = tmp_path / "p.json", tmp_path / "w.json"
    debs.write_text(json.dumps([{**DEB, "sha256": "not-a-hash"}]))
    wheels.write_text(json.dumps([WHEEL]))
    with pytest.raises((SystemExit, ValueError)):
        images.write_sbom("arm64", debs, wheels, tmp_path / "sbom.json")


def blob(layout: Path, data: bytes) -> dict[str, object]:
    sha = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs/sha256" / sha).write_bytes(data)
    return {"digest": f"sha256:{sha}", "size": len(data)}


def test_component_layouts_split_the_multiarch_archive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    entries = []
    for name in ("operator", "gateway"):
        manifests = [
            {**blob(src, f"{name}-{arch}".encode()), "platform": {"architecture": arch}}
            for arch in ("amd64", "arm64")
        ]
        index = json.dumps({"manifests": manifests}).encode()
        entries.append(
            {
                **blob(src, index),
                "mediaType": images.INDEX_TYPE,
                "annotations": {"org.opencontainers.image.ref.name": name},
            }
        )
    (src / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (src / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    archive = tmp_path / "images.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
    work = tmp_path / "work"
    work.mkdir()
    layouts = release.component_layouts(archive, work)
    assert set(layouts) == {"operator", "gateway"}
    for name, layout in layouts.items():
        (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == name
        digests = release.platform_digests(layout)
        assert set(digests) == {"amd64", "arm64"}
        for arch, digest in digests.items():
            blob_file = layout / "blobs/sha256" / digest.split(":")[1]
            assert blob_file.read_bytes() == f"{name}-{arch}".encode()


@pytest.mark.parametrize(
    ("registry", "message"),
    [
        ("https://registry.example/qsys", "must look like host[:port]/path"),
        ("Registry.Example/Qsys", "must look like host[:port]/path"),
        ("registry.example/qsys", "no cosign key"),
    ],
)
def test_release_rejects_bad_arguments_before_doing_anything(
    tmp_path: Path, registry: str, message: str
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "hack/release.py"),
            "--registry",
            registry,
            "--key",
            str(tmp_path / "missing.key"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
