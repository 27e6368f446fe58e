"""`kubectl explain` on the real API server prints the descriptions the models carry."""

from __future__ import annotations

import os
import subprocess

import pytest

from qsys_operator.api import AccessPolicy, LimitsSpec, QSysCoreSpec, Subject
from qsys_testkit.checkout import REPO, tool_dir
from qsys_testkit.cluster import Cluster, wait_for
from qsys_testkit.kube import apply_crds

pytestmark = [pytest.mark.e2e, pytest.mark.floor]


def _explain(cluster: Cluster, what: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool_dir("kube") / "kubectl"), "explain", what],
        env={**os.environ, "KUBECONFIG": cluster.kubeconfig},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _words(text: str) -> str:
    return " ".join(text.split())


def test_explain_shows_field_descriptions(cluster: Cluster) -> None:
    apply_crds(cluster.api, REPO / "crds")

    def published() -> str | None:
        out = _explain(cluster, "qsyscore.spec.limits")
        return out.stdout if out.returncode == 0 and "maxClients" in out.stdout else None

    # The OpenAPI document is republished a moment after a CRD changes.
    text = _words(wait_for("explain qsyscore.spec.limits", published, timeout=60))
    assert "<no description>" not in text
    assert _words(QSysCoreSpec.model_fields["limits"].description or "") in text
    for name, field in LimitsSpec.model_fields.items():
        assert name in text
        assert _words(field.description or "")[:60] in text, name
    assert "Default: 1000." in text

    top = _words(_explain(cluster, "accesspolicy").stdout)
    assert _words(AccessPolicy.DESCRIPTION) in top
    subjects = _words(_explain(cluster, "accesspolicy.spec.subjects").stdout)
    assert _words(Subject.model_fields["tokenSecretRef"].description or "")[:60] in subjects
    assert "<no description>" not in subjects
