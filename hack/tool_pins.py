"""One set of module versions across the pinned Go tool groups (hack/tools/GROUP).

Go's build cache compiles a package once for every group only when the package's module
and all of its dependencies are at the same versions in each group's go.mod. Left to
upstream's pins, the groups compiled k8s.io/api, client-go, grpc, x/net and friends
about ten times over (612 MB of source for a cold `make test`); aligned, 419 MB.

The rule, per module a group builds or requires:
- a Kubernetes-versioned module (k8s.io's staging repositories and the modules their
  releases pin: kube-openapi, utils, structured-merge-diff, ...; etcd, whose server must
  match its API) takes its family's version: `kube`'s for the KUBERNETES_136 family, the
  newest among the family for KUBERNETES_137;
- an application used as a library (KEEP: Prometheus, Alertmanager, the OpenTelemetry
  Collector) stays at each group's own pin: its packages move together with its own
  dependants;
- any other module takes the newest version any aligned group pins.
Only raising is automatic; a group that needs a module newer than its family's target
is reported and left alone.

    python hack/tool_pins.py check   the go.mod files follow the rule (no Go needed)
    python hack/tool_pins.py align   raise pins until they do (needs Go and the module
                                     proxy; rewrites go.mod and go.sum; rebuild and run
                                     the tests that use the groups afterwards)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

TOOLS = Path(__file__).resolve().parent / "tools"

KUBERNETES_136 = (
    "kube",
    "node",
    "kubeadm",
    "prometheus",
    "promtool",
    "prometheus-operator",
    "cosign",
    "kstatus",
    "kube-router",
)
KUBERNETES_137 = ("helm", "coredns", "otelcol")
NO_KUBERNETES = ("registry",)
FAMILIES = (KUBERNETES_136, KUBERNETES_137, NO_KUBERNETES)
LEADER = "kube"

LEFT_ALONE = {
    "metrics-server": (
        "an aggregated API server: its generated OpenAPI (v0.8.0) names models the way "
        "k8s.io/apiserver 0.33 looks them up; built against 0.36 it panics at start "
        "(cannot find model definition for io.k8s.metrics.pkg.apis.metrics.v1beta1.PodMetrics)"
    ),
    "argocd": "Argo CD's gitops-engine imports k8s.io/api/autoscaling/v2beta1, gone in 0.36",
    "kube-floor": "the oldest supported Kubernetes minor, on purpose",
    "krew": "client-go v11 of 2019; 4 MB",
    "kind": "no Kubernetes module; 2 MB",
    "actionlint": "`make lint` builds it before the background chain starts; 21 small modules",
}

KEEP = (
    "github.com/prometheus/prometheus",
    "github.com/prometheus/alertmanager",
    "github.com/prometheus-community/prom-label-proxy",
    "go.opentelemetry.io/collector",
    "github.com/open-telemetry/opentelemetry-collector-contrib",
    # kube-router's Docker client (v25) needs go-connections' sockets.DialPipe, gone in 0.7.
    "github.com/docker/go-connections",
)
KUBERNETES_PINNED = frozenset(
    {
        "k8s.io/kubernetes",
        "k8s.io/kube-openapi",
        "k8s.io/utils",
        "sigs.k8s.io/json",
        "sigs.k8s.io/randfill",
        "sigs.k8s.io/structured-merge-diff/v4",
        "sigs.k8s.io/structured-merge-diff/v6",
        "github.com/google/gnostic-models",
        "github.com/google/cel-go",
    }
)

_REQUIRE = re.compile(r"^\s*(?:require\s+)?([\w.\-/~]+)\s+(v\S+)(?:\s*//.*)?$")
_REPLACE = re.compile(r"^\s*(?:replace\s+)?(\S+)(?:\s+v\S+)?\s+=>\s+(\S+)\s+(v\S+)", re.MULTILINE)
_SEMVER = re.compile(r"^v(\d+)\.(\d+)\.(\d+)(?:-([^+]*))?(?:\+.*)?$")


def keep(module: str) -> bool:
    return module.startswith(KEEP)


def kubernetes_versioned(module: str) -> bool:
    return (module.startswith(("k8s.io/", "go.etcd.io/")) and module != "k8s.io/klog/v2") or (
        module in KUBERNETES_PINNED
    )


def semver_key(version: str) -> tuple[tuple[int, ...], int, tuple[tuple[int, int | str], ...]]:
    """Orders versions as Go does for these pins (a pre-release or pseudo-version sorts
    below its release)."""
    match = _SEMVER.match(version)
    if not match:
        return ((0, 0, 0), 0, ())
    pre = match[4]
    parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in (pre or "").split(".") if p)
    return (tuple(int(x) for x in match.groups()[:3]), 0 if pre is not None else 1, parts)


def requires(group: str, tools: Path = TOOLS) -> dict[str, str]:
    """Module path -> version a group's go.mod pins (a `replace` to a version wins)."""
    text = (tools / group / "go.mod").read_text()
    found: dict[str, str] = {}
    block = ""
    for line in text.splitlines():
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
    for old, new, version in _REPLACE.findall(text):
        if old == new:
            found[old] = version
    return found


def targets(pins: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    """Group -> module -> the version the rule asks for (only modules the group pins)."""
    newest: dict[str, str] = {}
    family_newest: dict[int, dict[str, str]] = {}
    for index, family in enumerate(FAMILIES):
        mine = family_newest.setdefault(index, {})
        for group in family:
            for module, version in pins.get(group, {}).items():
                if keep(module):
                    continue
                table = mine if kubernetes_versioned(module) else newest
                if module not in table or semver_key(version) > semver_key(table[module]):
                    table[module] = version
    leader = pins.get(LEADER, {})
    wanted: dict[str, dict[str, str]] = {}
    for index, family in enumerate(FAMILIES):
        for group in family:
            want = wanted.setdefault(group, {})
            for module in pins.get(group, {}):
                if keep(module):
                    continue
                if not kubernetes_versioned(module):
                    want[module] = newest[module]
                elif family is KUBERNETES_136 and module in leader:
                    want[module] = leader[module]
                elif family is KUBERNETES_137:
                    want[module] = family_newest[index][module]
    return wanted


def skew(pins: Mapping[str, Mapping[str, str]]) -> list[tuple[str, str, str, str]]:
    """(group, module, pinned, wanted) for each pin that breaks the rule."""
    return [
        (group, module, pins[group][module], version)
        for group, want in targets(pins).items()
        for module, version in sorted(want.items())
        if pins[group][module] != version
    ]


def aligned_groups() -> list[str]:
    return [group for family in FAMILIES for group in family]


def _build_list(group: str, tools: Path) -> dict[str, str]:
    """Modules (with versions) of the packages the group's binaries compile, resolved
    with -mod=mod so that raised requirements settle in go.mod and go.sum."""
    script = f'source {tools / group}/build.env; echo "$TAGS"; printf "%s\\n" "${{BINARIES[@]}}"'
    env = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    tags, packages = env[0], [entry.split("=", 1)[1] for entry in env[1:]]
    fmt = (
        "{{if .Module}}{{.Module.Path}} "
        "{{with .Module.Replace}}{{.Version}}{{else}}{{.Module.Version}}{{end}}{{end}}"
    )
    listed = subprocess.run(
        ["go", "list", "-mod=mod", "-deps", "-f", fmt, f"-tags={tags}", *packages],
        cwd=tools / group,
        capture_output=True,
        text=True,
        env={**os.environ, "CGO_ENABLED": "0"},
    )
    if listed.returncode:
        sys.exit(f"tool_pins: go list failed in hack/tools/{group}:\n{listed.stderr[-3000:]}")
    found = dict(line.split() for line in listed.stdout.splitlines() if len(line.split()) == 2)
    return {**requires(group, tools), **found}


def align(tools: Path = TOOLS, rounds: int = 6) -> None:
    for _ in range(rounds):
        pins = {group: _build_list(group, tools) for group in aligned_groups()}
        raised = 0
        for group, want in targets(pins).items():
            args: list[str] = []
            text = (tools / group / "go.mod").read_text()
            for module, version in sorted(want.items()):
                pinned = pins[group][module]
                if pinned == version or module.startswith("qsys-operator"):
                    continue
                if semver_key(version) < semver_key(pinned):
                    print(f"tool_pins: {group} needs {module} {pinned}, newer than {version}; left")
                    continue
                if re.search(rf"^\s*(?:replace\s+)?{re.escape(module)} => ", text, re.MULTILINE):
                    args.append(f"-replace={module}={module}@{version}")
                args.append(f"-require={module}@{version}")
            if args:
                subprocess.run(["go", "mod", "edit", *args], cwd=tools / group, check=True)
                print(f"tool_pins: {group}: {len(args)} pins raised")
                raised += len(args)
        if not raised:
            return
    sys.exit(f"tool_pins: the pins did not settle in {rounds} rounds")


def report(problems: Iterable[tuple[str, str, str, str]]) -> str:
    return "\n".join(
        f"  hack/tools/{g}: {m} {have} (wanted {want})" for g, m, have, want in problems
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("command", choices=["check", "align"])
    args = parser.parse_args(argv)
    if args.command == "align":
        align()
    problems = skew({group: requires(group) for group in aligned_groups()})
    if problems:
        print(f"tool_pins: {len(problems)} pins break the rule:\n{report(problems)}")
        return 1
    print(f"tool_pins: the {len(aligned_groups())} aligned groups follow the rule")
    return 0


if __name__ == "__main__":
    sys.exit(main())
