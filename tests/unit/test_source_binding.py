"""Source-bound subjects (legacy raw QRC clients without Logon): config and CRD validation,
the gateway's address lookup, subject merging and the rendered NetworkPolicy."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from qsys_gateway.auth import Authenticator
from qsys_operator.api import AccessPolicy, QSysCore
from qsys_operator.crdgen import openapi_schema
from qsys_operator.render import PolicyBinding, render_core_children
from qsys_operator.settings import OperatorSettings
from qsys_operator.tokens import resolve_tokens
from qsys_protocol.config import ConfigError, SubjectConfig, parse_config

SETTINGS = OperatorSettings()
TOKEN_SHA = hashlib.sha256(b"panel-token").hexdigest()


def config(*subjects: dict[str, Any]) -> dict[str, Any]:
    return {"core": {"host": "192.0.2.10"}, "subjects": list(subjects)}


# ---- gateway config -----------------------------------------------------------


def test_a_subject_has_a_token_or_sources_never_both_nor_neither() -> None:
    SubjectConfig(name="panel", tokenSha256=TOKEN_SHA)
    SubjectConfig(name="dsp", sourceCIDRs=["192.0.2.7/32"])
    for bad in (
        {"name": "x"},
        {"name": "x", "tokenSha256": TOKEN_SHA, "sourceCIDRs": ["192.0.2.7/32"]},
        {"name": "x", "sourceCIDRs": []},
    ):
        with pytest.raises(
            ValidationError,
            match="exactly one of tokenHmacSha256, tokenSha256, sourceCIDRs and serviceAccount",
        ):
            SubjectConfig.model_validate(bad)


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("192.0.2.7/24", "no host bits set"),
        ("192.0.2.300/32", "IPv4 or IPv6 network"),
        ("lobby-dsp", "IPv4 or IPv6 network"),
        ("0.0.0.0/0", "default route"),
        ("::/0", "default route"),
    ],
)
def test_bad_source_cidrs_are_refused(cidr: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(config({"name": "dsp", "sourceCIDRs": [cidr]}))


def test_source_cidrs_are_written_canonically() -> None:
    cfg = parse_config(
        config(
            {"name": "dsp", "sourceCIDRs": ["192.0.2.7", "2001:DB8::/64"]},
            {"name": "panel", "tokenSha256": TOKEN_SHA},
        )
    )
    assert cfg.subjects[0].sourceCIDRs == ["192.0.2.7/32", "2001:db8::/64"]
    dumped = cfg.model_dump(mode="json")["subjects"]
    assert (dumped[0]["tokenHmacSha256"], dumped[0]["tokenSha256"]) == (None, None)
    assert "sourceCIDRs" not in dumped[1]
    assert parse_config(cfg.model_dump(mode="json")) == cfg


def test_overlapping_sources_of_two_subjects_are_refused() -> None:
    with pytest.raises(ConfigError, match="'dsp' and 'amp' overlap"):
        parse_config(
            config(
                {"name": "dsp", "sourceCIDRs": ["192.0.2.0/28"]},
                {"name": "amp", "sourceCIDRs": ["192.0.2.8/32"]},
            )
        )
    # One subject may list overlapping networks of its own.
    parse_config(config({"name": "dsp", "sourceCIDRs": ["192.0.2.0/28", "192.0.2.8/32"]}))


# ---- the gateway's lookup -------------------------------------------------------


def test_by_source_matches_the_peer_address() -> None:
    cfg = parse_config(
        config(
            {"name": "dsp", "sourceCIDRs": ["192.0.2.0/29"]},
            {"name": "v6", "sourceCIDRs": ["2001:db8::/64"]},
            {"name": "panel", "tokenSha256": TOKEN_SHA},
        )
    )
    auth = Authenticator(cfg.subjects)
    found = {
        address: (s.name if (s := auth.by_source(address)) else None)
        for address in (
            "192.0.2.1",
            "192.0.2.7",
            "192.0.2.8",
            "::ffff:192.0.2.3",  # a dual-stack listener's view of an IPv4 peer
            "2001:db8::5",
            "fe80::1%eth0",
            "-",
            "",
        )
    }
    assert found == {
        "192.0.2.1": "dsp",
        "192.0.2.7": "dsp",
        "192.0.2.8": None,
        "::ffff:192.0.2.3": "dsp",
        "2001:db8::5": "v6",
        "fe80::1%eth0": None,
        "-": None,
        "": None,
    }
    # A source-bound subject has no token: no token authenticates as it.
    assert auth.authenticate("") is None
    assert Authenticator([]).by_source("192.0.2.1") is None


# ---- CRD --------------------------------------------------------------------------


def policy(
    *subjects: dict[str, Any], name: str = "legacy", created: str = "2024-01-01T00:00:00Z"
) -> AccessPolicy:
    return AccessPolicy.model_validate(
        {
            "metadata": {"name": name, "namespace": "av", "creationTimestamp": created},
            "spec": {
                "coreRef": {"name": "hall"},
                "subjects": list(subjects),
                "rules": [{"methods": ["Component.Get"]}],
            },
        }
    )


def test_access_policy_validates_source_cidrs() -> None:
    ok = policy({"name": "dsp", "sourceCIDRs": ["192.0.2.7/32"]})
    assert ok.spec.subjects[0].sourceCIDRs == ["192.0.2.7/32"]
    for bad in (["192.0.2.7/24"], ["0.0.0.0/0"], ["nope"], [], ["192.0.2.1/32"] * 33):
        with pytest.raises(ValidationError):
            policy({"name": "dsp", "sourceCIDRs": bad})


def test_crd_schema_carries_the_cidr_and_exclusivity_rules() -> None:
    schema = openapi_schema(AccessPolicy)
    subject = schema["properties"]["spec"]["properties"]["subjects"]["items"]
    assert subject["x-kubernetes-validations"][0] == {
        "rule": "!(has(self.tokenSecretRef) && has(self.sourceCIDRs))",
        "message": "a subject authenticates with a token or by sourceCIDRs, not both",
    }
    cidrs = subject["properties"]["sourceCIDRs"]
    assert (cidrs["minItems"], cidrs["maxItems"]) == (1, 32)
    rules = [v["rule"] for v in cidrs["items"]["x-kubernetes-validations"]]
    assert rules == [
        "isCIDR(self)",
        "!isCIDR(self) || string(cidr(self).masked()) == self",
        "!isCIDR(self) || cidr(self).prefixLength() >= (cidr(self).ip().family() == 4 ? 24 : 64)",
    ]


# ---- merge and NetworkPolicy ------------------------------------------------------


def core(**spec: Any) -> QSysCore:
    return QSysCore.model_validate(
        {
            "metadata": {"name": "hall", "namespace": "av", "uid": "u", "generation": 1},
            "spec": {"core": {"host": "192.0.2.10"}, **spec},
        }
    )


def render(*policies: AccessPolicy, **spec: Any) -> Any:
    bindings = [
        PolicyBinding(p, {s.name: TOKEN_SHA for s in p.spec.subjects if not s.sourceCIDRs})
        for p in policies
    ]
    return render_core_children(core(**spec), bindings, SETTINGS)


def network_policy(result: Any) -> dict[str, Any]:
    return next(o for o in result.objects if o["kind"] == "NetworkPolicy")


def gateway_subjects(result: Any) -> list[dict[str, Any]]:
    secret = next(o for o in result.objects if o["kind"] == "Secret")
    subjects: list[dict[str, Any]] = yaml.safe_load(
        base64.b64decode(secret["data"]["gateway.yaml"])
    )["subjects"]
    return subjects


def test_source_bound_subject_needs_no_token_and_reaches_the_config() -> None:
    result = render(
        policy(
            {"name": "dsp", "sourceCIDRs": ["192.0.2.32/28", "2001:db8::7/128"]},
            {"name": "panel"},
        )
    )
    assert result.unresolved == []
    assert result.conflicts == []
    rules = [
        {"methods": ["Component.Get"], "components": ["*"], "controls": ["*"], "valueRange": None}
    ]
    assert gateway_subjects(result) == [
        {
            "name": "dsp",
            "tokenHmacSha256": None,
            "tokenSha256": None,
            "sourceCIDRs": ["192.0.2.32/28", "2001:db8::7/128"],
            "rate": None,
            "rules": rules,
        },
        {
            "name": "panel",
            "tokenHmacSha256": TOKEN_SHA,
            "tokenSha256": None,
            "rate": None,
            "rules": rules,
        },
    ]


def test_network_policy_admits_exactly_the_sources_on_the_qrc_port() -> None:
    np = network_policy(
        render(policy({"name": "dsp", "sourceCIDRs": ["192.0.2.32/28", "2001:db8::7/128"]}))
    )
    ingress = np["spec"]["ingress"]
    assert ingress[1] == {
        "from": [{"ipBlock": {"cidr": "192.0.2.32/28"}}, {"ipBlock": {"cidr": "2001:db8::7/128"}}],
        "ports": [{"protocol": "TCP", "port": 1710}],
    }
    # Nothing else admits those networks: the other rules name pods and namespaces only.
    others = [peer for rule in ingress if rule is not ingress[1] for peer in rule["from"]]
    assert all("ipBlock" not in peer for peer in others)


def test_network_policy_without_source_bound_subjects_has_no_ip_rule() -> None:
    ingress = network_policy(render(policy({"name": "panel"})))["spec"]["ingress"]
    assert len(ingress) == 2
    assert all("ipBlock" not in peer for rule in ingress for peer in rule["from"])


def test_overlapping_sources_of_a_later_policy_are_left_out_and_not_admitted() -> None:
    first = policy({"name": "dsp", "sourceCIDRs": ["192.0.2.0/28"]}, name="first")
    later = policy(
        {"name": "amp", "sourceCIDRs": ["192.0.2.8/29"]},
        name="later",
        created="2024-02-01T00:00:00Z",
    )
    result = render(first, later)
    assert [(c.subject, c.policy, c.kept_by, c.reason) for c in result.conflicts] == [
        ("amp", "later", "first", "overlapping-source")
    ]
    assert [s["name"] for s in gateway_subjects(result)] == ["dsp"]
    cidrs = [p["ipBlock"]["cidr"] for p in network_policy(result)["spec"]["ingress"][1]["from"]]
    assert cidrs == ["192.0.2.0/28"]


@pytest.mark.parametrize(
    ("cidrs", "refused"),
    [
        (["0.0.0.0/1", "128.0.0.0/1"], "0.0.0.0/1 is wider than /24"),
        (["::/1", "8000::/1"], "::/1 is wider than /64"),
        (["192.0.2.0/24", "10.0.0.0/8"], "10.0.0.0/8 is wider than /24"),
        (["2001:db8::/48"], "2001:db8::/48 is wider than /64"),
        (["::ffff:0.0.0.0/96"], None),  # the gateway never matches IPv4 peers to IPv6 networks
    ],
)
def test_wide_sources_are_left_out_and_never_admitted(
    cidrs: list[str], refused: str | None
) -> None:
    """Stored before the CEL rule (or written past it): the operator refuses it as well."""
    result = render(policy({"name": "dsp", "sourceCIDRs": cidrs}, {"name": "panel"}))
    if refused is None:
        assert result.conflicts == []
        return
    assert [(c.subject, c.reason, c.detail) for c in result.conflicts] == [
        ("dsp", "source-too-wide", refused)
    ]
    assert [s["name"] for s in gateway_subjects(result)] == ["panel"]
    ingress = network_policy(result)["spec"]["ingress"]
    assert all("ipBlock" not in peer for rule in ingress for peer in rule["from"])


def test_sources_of_one_core_together_stay_within_the_limit() -> None:
    """16 /24s fill the IPv4 budget (4,096 addresses); the next subject, in this or a
    later policy, is left out and reported; the first ones keep their networks."""
    nets = [f"198.18.{i}.0/24" for i in range(16)]
    first = policy(*({"name": f"room{i}", "sourceCIDRs": [n]} for i, n in enumerate(nets)))
    later = policy(
        {"name": "extra", "sourceCIDRs": ["198.19.0.7/32"]},
        {"name": "v6", "sourceCIDRs": [f"2001:db8:0:{i}::/64" for i in range(16)]},
        {"name": "v6more", "sourceCIDRs": ["2001:db8:1::/64"]},
        name="later",
        created="2024-02-01T00:00:00Z",
    )
    result = render(first, later)
    assert [(c.subject, c.policy, c.reason) for c in result.conflicts] == [
        ("extra", "later", "source-limit"),
        ("v6more", "later", "source-limit"),
    ]
    assert result.conflicts[0].detail == (
        "the source-bound subjects of one core may cover at most 4096 IPv4 addresses together"
    )
    assert "16 IPv6 /64 networks" in result.conflicts[1].detail
    admitted = {s["name"] for s in gateway_subjects(result)}
    assert admitted == {f"room{i}" for i in range(16)} | {"v6"}
    cidrs = [p["ipBlock"]["cidr"] for p in network_policy(result)["spec"]["ingress"][1]["from"]]
    assert "198.19.0.7/32" not in cidrs
    assert "2001:db8:1::/64" not in cidrs
    assert len(cidrs) == 32


def test_source_limit_message_reaches_the_policy_status() -> None:
    from qsys_operator.derive import PolicyFindings, policy_status

    result = render(policy({"name": "dsp", "sourceCIDRs": ["0.0.0.0/1", "128.0.0.0/1"]}))
    found = PolicyFindings("hall", "av", 1, "hall", conflicts=result.conflicts)
    update = policy_status("legacy", 1, {}, found, "2026-01-01T00:00:00Z")
    assert update.status is not None
    ready = next(c for c in update.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "SubjectConflict")
    assert ready["message"] == (
        "subject dsp left out: source-too-wide: 0.0.0.0/1 is wider than /24"
    )


def test_disabled_network_policy_stays_absent() -> None:
    result = render(
        policy({"name": "dsp", "sourceCIDRs": ["192.0.2.7/32"]}),
        networkPolicy={"enabled": False},
    )
    assert all(o["kind"] != "NetworkPolicy" for o in result.objects)


class NoSecrets:
    """A Kube stand-in that records Secret reads and creations."""

    def __init__(self) -> None:
        self.touched: list[str] = []

    async def read_secret(self, namespace: str, name: str) -> None:
        self.touched.append(f"read {name}")

    async def create(self, manifest: dict[str, Any]) -> None:
        self.touched.append(f"create {manifest['metadata']['name']}")


async def test_no_token_secret_is_made_or_read_for_a_source_bound_subject() -> None:
    kube = NoSecrets()
    bound = policy({"name": "dsp", "sourceCIDRs": ["192.0.2.7/32"]})
    tokens = await resolve_tokens(kube, bound, None, b"p" * 32)  # type: ignore[arg-type]
    assert kube.touched == []
    assert (tokens.hashes, tokens.secrets, tokens.problems) == ({}, {}, {})
