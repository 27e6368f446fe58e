"""`make demo` end to end: hack/demo.py as a subprocess on the e2e cluster, on real pods
(the operator from the chart, the simulator pod, the gateway pods on the real node).

With KUBECONFIG set the demo neither starts nor stops a control plane, so it runs on the
session's cluster (local or kind) and leaves it as it found it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from node_support import real_node_names

from qsys_testkit.checkout import REPO
from qsys_testkit.cluster import Cluster

pytestmark = [
    pytest.mark.node_lane("b"),
    pytest.mark.e2e,
    pytest.mark.usefixtures("real_node"),
    pytest.mark.tools("helm"),
]

DEMO_TIMEOUT_S = 480


def test_demo_shows_one_allowed_and_one_denied_call(cluster: Cluster) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "demo.py")],
        env={**os.environ, "KUBECONFIG": cluster.kubeconfig},
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
        cwd=REPO,
    )
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-4000:]
    assert "not started or stopped by the demo" in out
    allowed = out.split("The allowed call", 1)[1].split("==>", 1)[0]
    denied = out.split("The denied call", 1)[1].split("==>", 1)[0]
    assert "HTTP 200" in allowed
    assert "HTTP 403" in denied
    assert "Forbidden by policy" in denied
    assert '"decision":"allow"' in out
    assert '"decision":"deny"' in out
    assert "CoreConnected    True" in out
    assert "2 pods Ready" in out
    pods = out.split("2 pods Ready", 1)[1].split("==>", 1)[0]
    assert any(f" on {name}" in pods for name in real_node_names(cluster)), pods
    assert "Cleaning up: release qsys-" in out
    assert "deleted" in out.split("Cleaning up:", 1)[1]
