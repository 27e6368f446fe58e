"""The kubectl plugin's own distribution and krew manifest agree with the project: the
same version, a pin on the operator distribution, one owner of `kubectl-qsys`, and a
manifest of the shape krew accepts (krew itself checks it:
tests/integration/test_plugin_dist.py)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
MAIN = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
PLUGIN = tomllib.loads((REPO / "plugin" / "pyproject.toml").read_text("utf-8"))
MANIFEST = yaml.safe_load((REPO / "plugins" / "qsys.yaml").read_text("utf-8"))


def test_plugin_distribution_follows_the_operator_version() -> None:
    version = MAIN["project"]["version"]
    assert PLUGIN["project"]["version"] == version
    assert f"qsys-operator=={version}" in PLUGIN["project"]["dependencies"]
    assert PLUGIN["project"]["license"] == MAIN["project"]["license"]
    assert PLUGIN["project"]["requires-python"] == MAIN["project"]["requires-python"]


def test_kubectl_qsys_has_one_owner() -> None:
    assert PLUGIN["project"]["scripts"] == {"kubectl-qsys": "qsys_kubectl.cli:run"}
    assert "kubectl-qsys" not in MAIN["project"]["scripts"]
    assert "plugin" not in MAIN["tool"]["setuptools"]["packages"]["find"]["where"]


def test_krew_manifest_has_the_documented_shape() -> None:
    version = PLUGIN["project"]["version"]
    assert MANIFEST["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert MANIFEST["kind"] == "Plugin"
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", MANIFEST["metadata"]["name"])
    spec = MANIFEST["spec"]
    assert spec["version"] == f"v{version}"
    assert spec["shortDescription"]
    assert "\n" not in spec["shortDescription"]
    assert spec["homepage"].startswith("https://")
    for platform in spec["platforms"]:
        assert platform["uri"].startswith("https://")
        assert f"v{version}" in platform["uri"]
        assert re.fullmatch(r"[0-9a-f]{64}", platform["sha256"])
        assert platform["bin"] == "kubectl-qsys"
        (expr,) = platform["selector"]["matchExpressions"]
        assert expr["key"] == "os"
        assert set(expr["values"]) <= {"linux", "darwin"}
        assert all(set(f) == {"from", "to"} for f in platform["files"])


def test_launcher_is_filled_with_the_version_and_is_executable() -> None:
    launcher = REPO / "plugin" / "krew" / "kubectl-qsys"
    text = launcher.read_text("utf-8")
    assert text.startswith("#!/bin/sh\n")
    assert "version=@VERSION@" in text
    assert launcher.stat().st_mode & 0o111
