"""Golden files of the rendered children (tests/unit/testdata/*.golden), beside the fragment
assertions of test_render*.py: every field of every child of a few typical cores, so any
change to what the operator applies shows up in review as a diff of these files.

After an intended change: `UPDATE_GOLDEN=1 .venv/bin/python -m pytest
tests/unit/test_render_golden.py` rewrites them; review and commit the diff
(docs/testing.md, "Golden files")."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from qsys_operator.api import AccessPolicy, QSysCore
from qsys_operator.render import (
    PolicyBinding,
    render_core_children,
    render_token_key_secret,
    render_token_secret,
)
from qsys_operator.settings import OperatorSettings

TESTDATA = Path(__file__).resolve().parent / "testdata"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
API_SERVER = [("198.18.0.1", 6443)]
SETTINGS = OperatorSettings(gateway_image="ghcr.io/qsys-operator/gateway:golden")
"""A fixed image: the default one follows the project's version."""


def _core(**spec: Any) -> QSysCore:
    return QSysCore.model_validate(
        {
            "metadata": {"name": "hall", "namespace": "av", "uid": "core-uid", "generation": 1},
            "spec": {"core": {"host": "192.0.2.10"}} | spec,
        }
    )


def _policy(*subjects: dict[str, Any]) -> AccessPolicy:
    return AccessPolicy.model_validate(
        {
            "metadata": {
                "name": "lobby",
                "namespace": "av",
                "uid": "lobby-uid",
                "creationTimestamp": "2024-01-01T00:00:00Z",
            },
            "spec": {
                "coreRef": {"name": "hall"},
                "subjects": list(subjects),
                "rules": [{"methods": ["Control.Get", "Component.Get*"]}],
            },
        }
    )


def _hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _children(core: QSysCore, policy: AccessPolicy) -> list[dict[str, Any]]:
    hashes = {s.name: _hash(s.name) for s in policy.spec.subjects if s.uses_token}
    result = render_core_children(core, [PolicyBinding(policy, hashes)], SETTINGS, API_SERVER)
    docs = list(result.objects)
    if result.service_monitor is not None:
        docs.append(result.service_monitor)
    absent = [{"absent": f"{ref.kind.kind}/{ref.name}"} for ref in sorted(result.absent)]
    return docs + absent


def _default() -> list[dict[str, Any]]:
    return _children(_core(), _policy({"name": "panel"}))


def _identity() -> list[dict[str, Any]]:
    account = {"name": "scheduler", "serviceAccount": {"name": "room-scheduler"}}
    return _children(_core(), _policy(account, {"name": "panel", "sourceCIDRs": ["198.18.5.0/24"]}))


def _everything() -> list[dict[str, Any]]:
    core = _core(
        core={
            "host": "192.0.2.10",
            "redundantHost": "192.0.2.11",
            "credentialsSecretRef": {"name": "hall-login"},
        },
        gateway={
            "replicas": 3,
            "tlsSecretName": "hall-tls",
            "autoscaling": {"maxReplicas": 6},
        },
        monitoring={"serviceMonitor": {"enabled": True}},
    )
    return _children(core, _policy({"name": "panel"}))


def _minimal() -> list[dict[str, Any]]:
    return _children(_core(networkPolicy={"enabled": False}), _policy({"name": "panel"}))


def _tokens() -> list[dict[str, Any]]:
    core, policy = _core(), _policy({"name": "panel"})
    return [
        render_token_key_secret(core, "k" * 43),
        render_token_secret(policy, "panel", "t" * 43, "p" * 64, core),
    ]


CASES: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "core-default": _default,
    "core-identity": _identity,
    "core-everything": _everything,
    "core-minimal": _minimal,
    "token-secrets": _tokens,
}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (a decoded gateway.yaml) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _decoded(doc: dict[str, Any]) -> dict[str, Any]:
    """A Secret with its data decoded (base64 is lossless, so nothing is hidden): the
    golden file shows the gateway.yaml it carries."""
    if doc.get("kind") != "Secret":
        return doc
    data = doc.pop("data", None) or {}
    return doc | {
        "data (base64-decoded)": {k: base64.b64decode(v).decode() for k, v in data.items()}
    }


def render_golden(case: str) -> str:
    docs = [_decoded(dict(d)) for d in CASES[case]()]
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=100)


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_children_match_their_golden_file(case: str) -> None:
    path = TESTDATA / f"{case}.golden"
    got = render_golden(case)
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(got, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1 to write it"
    want = path.read_text(encoding="utf-8")
    assert got == want, (
        f"the render of {case} differs from {path.name}; if intended, rewrite it with "
        "UPDATE_GOLDEN=1 and review the diff"
    )


def test_every_golden_file_has_a_case() -> None:
    assert {p.stem for p in TESTDATA.glob("*.golden")} == set(CASES)
