"""Pins of the Go tool groups (hack/tools/GROUP/go.mod) that must agree so that one Go
build cache serves several groups: a package compiles once only when its module and all
of its dependencies are at the same versions in both groups (hack/tool_pins.py)."""

from __future__ import annotations

import copy

from unit_support import hack_script

pins_rule = hack_script("tool_pins")


def real_pins() -> dict[str, dict[str, str]]:
    return {group: pins_rule.requires(group) for group in pins_rule.aligned_groups()}


def test_requires_reads_requires_and_same_module_replaces() -> None:
    kube = pins_rule.requires("kube")
    assert kube["k8s.io/kubernetes"] == "v1.36.3"
    assert kube["k8s.io/client-go"] == "v0.36.3"
    assert kube["golang.org/x/sys"].startswith("v0.")


def test_every_tool_group_is_aligned_or_left_alone_for_a_stated_reason() -> None:
    groups = {p.name for p in pins_rule.TOOLS.iterdir() if (p / "go.mod").is_file()}
    aligned = set(pins_rule.aligned_groups())
    assert not aligned & set(pins_rule.LEFT_ALONE)
    assert groups == aligned | set(pins_rule.LEFT_ALONE), (
        "a new group in hack/tools belongs to a family of hack/tool_pins.py "
        "or to LEFT_ALONE with its reason"
    )
    assert all(pins_rule.LEFT_ALONE.values())


def test_the_aligned_groups_follow_the_rule() -> None:
    problems = pins_rule.skew(real_pins())
    assert not problems, (
        "these pins make packages compile once per group instead of once: run "
        "`python hack/tool_pins.py align`, rebuild, and run the tests of the groups:\n"
        + pins_rule.report(problems)
    )


def test_a_common_module_at_another_version_in_one_group_is_caught() -> None:
    pins = copy.deepcopy(real_pins())
    newest = pins["registry"]["golang.org/x/net"]
    pins["registry"]["golang.org/x/net"] = "v0.40.0"
    assert ("registry", "golang.org/x/net", "v0.40.0", newest) in pins_rule.skew(pins)


def test_kubernetes_modules_follow_the_family_leader() -> None:
    pins = copy.deepcopy(real_pins())
    pins["prometheus-operator"]["k8s.io/client-go"] = "v0.33.3"
    assert pins_rule.skew(pins) == [
        ("prometheus-operator", "k8s.io/client-go", "v0.33.3", "v0.36.3")
    ]


def test_the_two_kubernetes_families_keep_their_own_minors() -> None:
    pins = real_pins()
    assert (
        pins["kube"]["k8s.io/client-go"]
        == pins["prometheus-operator"]["k8s.io/client-go"]
        == "v0.36.3"
    )
    assert pins["helm"]["k8s.io/client-go"] == pins["coredns"]["k8s.io/client-go"] != "v0.36.3"
    assert (
        pins["kube"]["golang.org/x/net"]
        == pins["helm"]["golang.org/x/net"]
        == pins["registry"]["golang.org/x/net"]
    )


def test_applications_used_as_libraries_keep_each_groups_pin() -> None:
    pins = real_pins()
    library = "github.com/prometheus/prometheus"
    assert pins["prometheus-operator"][library] != pins["prometheus"][library]
    assert not [p for p in pins_rule.skew(pins) if p[1] == library]


def test_semver_order_puts_pseudo_versions_below_their_release() -> None:
    key = pins_rule.semver_key
    assert key("v1.36.12-0.20260120151049-f2248ac996af") < key("v1.36.12") < key("v1.36.13")
    assert key("v0.9.0") < key("v0.10.0")
