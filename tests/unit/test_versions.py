"""One version for the chart, the images and the Python package (hack/version.py), and
one Kubernetes floor stated by the chart, the README, the docs and the floor tool group."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from unit_support import hack_script

import qsys_gateway
import qsys_operator
from qsys_operator.settings import DEFAULT_GATEWAY_IMAGE

REPO = Path(__file__).resolve().parents[2]


version = hack_script("version")
images = hack_script("images")


def test_chart_images_and_package_share_one_semver() -> None:
    current = version.version()
    version.parse(current)
    assert version.problems() == []
    assert version.chart_versions() == {"version": current, "appVersion": current}
    assert qsys_operator.__version__ == qsys_gateway.__version__ == current
    assert DEFAULT_GATEWAY_IMAGE.endswith(f"/gateway:{current}")
    for component, ref in images.image_names().items():
        assert ref.endswith(f"/{component}:{current}"), ref


def test_disagreements_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chart = tmp_path / "Chart.yaml"
    pyproject = tmp_path / "pyproject.toml"
    changelog = tmp_path / "CHANGELOG.md"
    pyproject.write_text('[project]\nname = "x"\nversion = "1.2.3"\n')
    chart.write_text('apiVersion: v2\nversion: 1.2.3\nappVersion: "1.2.4"\n')
    changelog.write_text("# Changelog\n\n## [2.0.0] - 2026-01-01\n")
    for name, path in (("CHART", chart), ("PYPROJECT", pyproject), ("CHANGELOG", changelog)):
        monkeypatch.setattr(version, name, path)
    followers = {}
    for name in ("PLUGIN", "KREW", "EXAMPLE_CORE"):
        copy = tmp_path / f"{name}.txt"
        copy.write_text(getattr(version, name).read_text("utf-8"), "utf-8")
        monkeypatch.setattr(version, name, copy)
        followers[name] = copy
    found = version.problems()
    assert any("appVersion is 1.2.4" in p for p in found), found
    assert any("no '## [Unreleased]'" in p for p in found), found
    assert any("newest release 2.0.0 is above 1.2.3" in p for p in found), found
    version.set_version("2.1.0")
    changelog.write_text("## [Unreleased]\n\n## [2.0.0] - 2026-01-01\n")
    assert version.problems() == []
    assert yaml.safe_load(chart.read_text()) == {
        "apiVersion": "v2",
        "version": "2.1.0",
        "appVersion": "2.1.0",
    }
    assert 'version = "2.1.0"' in followers["PLUGIN"].read_text()
    assert '"qsys-operator==2.1.0"' in followers["PLUGIN"].read_text()
    assert "version: v2.1.0" in followers["KREW"].read_text()
    assert "kubectl-qsys-v2.1.0.tar.gz" in followers["KREW"].read_text()
    assert "core-sim:2.1.0" in followers["EXAMPLE_CORE"].read_text()
    with pytest.raises(ValueError, match="not a SemVer"):
        version.set_version("2.1")


def test_changelog_lists_the_previous_release_the_upgrade_test_installs() -> None:
    previous = dict(
        line.split("=", 1)
        for line in (REPO / "hack" / "upgrade" / "previous.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert previous["VERSION"] in version.released()
    assert version.parse(previous["VERSION"]) < version.parse(version.version())
    assert re.fullmatch(r"[0-9a-f]{40}", previous["COMMIT"])


FLOOR = "1.31"


def test_kubernetes_floor_is_stated_the_same_everywhere() -> None:
    chart = yaml.safe_load((REPO / "charts" / "qsys-operator" / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={FLOOR}.0-0"
    env = (REPO / "hack" / "tools" / "kube-floor" / "build.env").read_text()
    assert re.search(rf"^VERSION=v{re.escape(FLOOR)}\.\d+$", env, re.MULTILINE)
    gomod = (REPO / "hack" / "tools" / "kube-floor" / "go.mod").read_text()
    assert re.search(rf"k8s.io/kubernetes v{re.escape(FLOOR)}\.\d+", gomod)
    for doc in ("README.md", "docs/install.md"):
        text = (REPO / doc).read_text()
        assert f"Kubernetes {FLOOR} or newer" in text, doc
        assert not re.search(r"Kubernetes 1\.(2\d|30) or newer", text), doc
