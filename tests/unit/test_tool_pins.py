"""Pins of the Go tool groups (hack/tools/GROUP/go.mod) that must agree so that one Go
build cache serves several groups: a package compiles once only when its module and all
of its dependencies are at the same versions in both groups."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "hack" / "tools"

# (follower, leader): every module the follower requires at all, it requires at the
# leader's version. node builds after kube and shares most of its packages.
ALIGNED = [("node", "kube"), ("kubeadm", "kube")]

_REQUIRE = re.compile(r"^\s*(?:require\s+)?([\w.\-/~]+)\s+(v\S+)(?:\s*//.*)?$")


def requires(group: str) -> dict[str, str]:
    """Module path -> version of the `require` lines of hack/tools/GROUP/go.mod."""
    found: dict[str, str] = {}
    block = ""
    for line in (TOOLS / group / "go.mod").read_text().splitlines():
        stripped = line.strip()
        if stripped.endswith("("):
            block = stripped.split()[0]
            continue
        if stripped == ")":
            block = ""
            continue
        if block == "require" or stripped.startswith("require "):
            match = _REQUIRE.match(stripped)
            if match:
                found[match[1]] = match[2]
    return found


def replaced(group: str) -> set[str]:
    text = (TOOLS / group / "go.mod").read_text()
    return set(re.findall(r"^\s*(?:replace\s+)?(\S+) => ", text, flags=re.MULTILINE))


def test_requires_parses_the_pins() -> None:
    kube = requires("kube")
    assert kube["k8s.io/kubernetes"] == "v1.36.3"
    assert kube["golang.org/x/sys"].startswith("v0.")
    assert "k8s.io/client-go" in replaced("kube")


@pytest.mark.parametrize(("follower", "leader"), ALIGNED)
def test_shared_modules_are_pinned_at_the_leaders_versions(follower: str, leader: str) -> None:
    ours, theirs = requires(follower), requires(leader)
    both_replaced = replaced(follower) & replaced(leader)
    skew = {
        module: (version, theirs[module])
        for module, version in ours.items()
        if module in theirs and module not in both_replaced and version != theirs[module]
    }
    assert not skew, (
        f"hack/tools/{follower}/go.mod pins these modules at other versions than "
        f"hack/tools/{leader}/go.mod (({follower}, {leader}) per module), so their packages "
        f"compile twice: raise them with `go mod edit -require=MODULE@VERSION` and "
        f"`GOFLAGS=-mod=mod go mod tidy` in hack/tools/{follower}: {skew}"
    )
