"""The project's one version: pyproject.toml's [project] version, a SemVer X.Y.Z.

Everything else follows it: the Python packages' __version__ (package metadata), the
image tags (hack/images.py), the operator's default gateway image, and the chart's
version and appVersion, which Helm can only read from Chart.yaml, so this script writes
them:

    python hack/version.py              print the version
    python hack/version.py set 0.3.0    set it (pyproject.toml, Chart.yaml, the plugin's
                                        pyproject.toml and krew manifest, examples/)
    python hack/version.py check        fail when Chart.yaml or CHANGELOG.md disagree
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
CHART = REPO / "charts" / "qsys-operator" / "Chart.yaml"
PLUGIN = REPO / "plugin" / "pyproject.toml"
KREW = REPO / "plugins" / "qsys.yaml"
EXAMPLE_CORE = REPO / "examples" / "core-simulator.yaml"
CHANGELOG = REPO / "CHANGELOG.md"
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
RELEASE_HEADING = re.compile(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", re.MULTILINE)


def version() -> str:
    return str(tomllib.loads(PYPROJECT.read_text("utf-8"))["project"]["version"])


def parse(text: str) -> tuple[int, int, int]:
    match = SEMVER.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a SemVer release version X.Y.Z")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def chart_versions(text: str | None = None) -> dict[str, str]:
    text = CHART.read_text("utf-8") if text is None else text
    found = {}
    for key in ("version", "appVersion"):
        match = re.search(rf"^{key}: \"?([^\"\n]+)\"?$", text, re.MULTILINE)
        if match is None:
            raise ValueError(f"{CHART.name}: no top-level {key}")
        found[key] = match.group(1)
    return found


def released(text: str | None = None) -> list[str]:
    """Versions with a dated heading in CHANGELOG.md, newest first."""
    return RELEASE_HEADING.findall(CHANGELOG.read_text("utf-8") if text is None else text)


def problems() -> list[str]:
    current = version()
    out = []
    try:
        parse(current)
    except ValueError as exc:
        out.append(f"pyproject.toml: {exc}")
        return out
    for key, value in chart_versions().items():
        if value != current:
            out.append(f"Chart.yaml {key} is {value}, pyproject.toml says {current}")
    changelog = CHANGELOG.read_text("utf-8")
    if "## [Unreleased]" not in changelog:
        out.append("CHANGELOG.md has no '## [Unreleased]' section")
    history = released(changelog)
    if history and parse(history[0]) > parse(current):
        out.append(f"CHANGELOG.md's newest release {history[0]} is above {current}")
    return out


def set_version(new: str) -> None:
    parse(new)
    text = PYPROJECT.read_text("utf-8")
    text = re.sub(r'^version = "[^"]*"$', f'version = "{new}"', text, count=1, flags=re.M)
    PYPROJECT.write_text(text, "utf-8")
    chart = CHART.read_text("utf-8")
    chart = re.sub(r"^version: .*$", f"version: {new}", chart, count=1, flags=re.M)
    chart = re.sub(r"^appVersion: .*$", f'appVersion: "{new}"', chart, count=1, flags=re.M)
    chart = re.sub(r"(image: ghcr\.io/qsys-operator/[a-z-]+):\S+", rf"\g<1>:{new}", chart)
    CHART.write_text(chart, "utf-8")
    plugin = PLUGIN.read_text("utf-8")
    plugin = re.sub(r'^version = "[^"]*"$', f'version = "{new}"', plugin, count=1, flags=re.M)
    plugin = re.sub(r'"qsys-operator==[^"]*"', f'"qsys-operator=={new}"', plugin)
    PLUGIN.write_text(plugin, "utf-8")
    krew = KREW.read_text("utf-8")
    krew = re.sub(r"^  version: v\S+$", f"  version: v{new}", krew, count=1, flags=re.M)
    krew = re.sub(
        r"(download/)v[^/]+/kubectl-qsys-v[^/]+?(\.tar\.gz)",
        rf"\g<1>v{new}/kubectl-qsys-v{new}\2",
        krew,
    )
    KREW.write_text(krew, "utf-8")
    example = EXAMPLE_CORE.read_text("utf-8")
    example = re.sub(r"(image: ghcr\.io/qsys-operator/core-sim):\S+", rf"\g<1>:{new}", example)
    EXAMPLE_CORE.write_text(example, "utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("check")
    setter = sub.add_parser("set")
    setter.add_argument("version")
    args = parser.parse_args(argv)
    if args.command == "set":
        set_version(args.version)
    elif args.command == "check":
        found = problems()
        for problem in found:
            print(f"version: {problem}", file=sys.stderr)
        return 1 if found else 0
    print(version())
    return 0


if __name__ == "__main__":
    sys.exit(main())
