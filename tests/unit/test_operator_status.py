"""Operator internals without a cluster: conditions, token hashing, probe address filter."""

from __future__ import annotations

import base64
import hashlib

from qsys_operator.probe import _allowed
from qsys_operator.status import Cond, merge_conditions
from qsys_operator.tokens import _token_hash


def test_transition_time_kept_while_status_unchanged() -> None:
    first, t1 = merge_conditions([], [Cond("Ready", "False", "A", "x")], 1, "2026-01-01T00:00:00Z")
    assert [t.type for t in t1] == ["Ready"]
    again, t2 = merge_conditions(
        first, [Cond("Ready", "False", "B", "y")], 2, "2026-01-02T00:00:00Z"
    )
    assert t2 == []
    assert again[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert (again[0]["reason"], again[0]["message"], again[0]["observedGeneration"]) == (
        "B",
        "y",
        2,
    )
    flipped, t3 = merge_conditions(again, [Cond("Ready", "True", "Ok")], 2, "2026-01-03T00:00:00Z")
    assert flipped[0]["lastTransitionTime"] == "2026-01-03T00:00:00Z"
    assert [(t.old, t.new.status) for t in t3] == [("False", "True")]


def test_token_hash_matches_gateway_and_strips_newline() -> None:
    data = {"token": base64.b64encode(b"s3cret\n").decode()}
    assert _token_hash(data, "token") == hashlib.sha256(b"s3cret").hexdigest()
    assert _token_hash(data, "other") is None
    assert _token_hash({"token": "!!notbase64"}, "token") is None
    assert _token_hash({"token": base64.b64encode(b"  ").decode()}, "token") is None


def test_probe_only_dials_allowed_pod_ips() -> None:
    assert _allowed("127.77.0.2", ("127.0.0.0/8",))
    assert not _allowed("10.244.0.5", ("127.0.0.0/8",))
    assert _allowed("10.244.0.5", ())
    assert not _allowed("gateway.example", ())
