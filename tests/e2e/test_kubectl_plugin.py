"""`kubectl qsys` run by the real kubectl (plugin discovery on PATH) against the real
control plane and the real operator: every command, its output formats and its errors."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from operator_support import (
    Operator,
    StandInGateway,
    core_body,
    create,
    policy_body,
    running_operator,
    wait_condition,
)
from plugin_support import Plugin, fails, gateway_pod_ip, rendered_config

from qsys_testkit import SimulatorProcess
from qsys_testkit.checkout import REPO
from qsys_testkit.cluster import Cluster, must, wait_for
from qsys_testkit.kube import apply_crds, secret_text

pytestmark = pytest.mark.e2e

RULES = [
    {"methods": ["StatusGet", "Component.Get*"]},
    {
        "methods": ["Component.Set"],
        "components": ["gain*"],
        "controls": ["gain"],
        "valueRange": {"min": -100, "max": 0},
    },
]


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> None:
    apply_crds(cluster.api, REPO / "crds")


@pytest.fixture
def operator(cluster: Cluster, crds: None, namespace: str, tmp_path: Path) -> Iterator[Operator]:
    with running_operator(cluster, namespace, tmp_path / "operator.log") as op:
        yield op


def test_errors_without_resources(cluster: Cluster, crds: None, namespace: str) -> None:
    qsys = Plugin(cluster, namespace)
    empty = qsys("status")
    assert empty.returncode == 0, empty.stderr
    assert f'No QSysCores found in namespace "{namespace}"' in empty.stdout
    assert qsys.json("status") == {"items": []}
    fails(qsys("status", "room"), 'QSysCore "room"', "not found")
    fails(qsys("token", "show", "nope", "panel"), 'AccessPolicy "nope"', "not found")
    fails(qsys("token", "rotate", "nope", "panel"), 'AccessPolicy "nope"', "not found")
    fails(qsys("can-i", "nope", "panel", "StatusGet"), 'AccessPolicy "nope"', "not found")
    fails(qsys("call", "nope", "StatusGet", "--as", "panel"), 'QSysCore "nope"', "not found")
    fails(qsys("audit", "nope"), 'QSysCore "nope"', "not found")
    fails(qsys("status", "--context", "no-such-context"), "kubeconfig", "no-such-context")
    usage = qsys("can-i")
    assert usage.returncode == 2
    assert "usage: kubectl qsys" in usage.stderr


@pytest.mark.local_cluster  # kwok runs no kubelet streaming: port-forward and logs fail
def test_every_command_against_the_operator(
    cluster: Cluster, operator: Operator, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    qsys = Plugin(cluster, ns)
    create(
        cluster, ns, policy_body("panel", "room", [{"name": "gen"}, {"name": "ops"}], rules=RULES)
    )
    generated = wait_for("token", lambda: secret_text(cluster.api, ns, "panel-gen-token", "token"))

    # The token, as text and as JSON; an unknown subject is named in the error.
    shown = qsys("token", "show", "panel", "gen")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == generated
    data = qsys.json("token", "show", "panel", "gen")
    assert data | {"token": "-"} == {
        "policy": "panel",
        "subject": "gen",
        "secret": "panel-gen-token",
        "key": "token",
        "generated": True,
        "token": "-",
    }
    assert data["token"] == generated
    fails(qsys("token", "show", "panel", "nobody"), 'subject "nobody" not found', "gen, ops")
    # No core yet: nothing rendered for can-i to read.
    fails(qsys("can-i", "panel", "gen", "StatusGet"), "room-gateway-config", "not found")
    fails(qsys("can-i", "panel", "nobody", "StatusGet"), 'subject "nobody" not found')

    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(SimulatorProcess())
        create(cluster, ns, core_body("room", sim.port))
        wait_condition(cluster, ns, "AccessPolicy", "panel", "Bound", "True")

        # can-i: the rendered config, judged by the gateway's policy code.
        def can_i(*call: str) -> subprocess.CompletedProcess[str]:
            return qsys("can-i", "panel", "gen", *call)

        wait_for("config rendered", lambda: can_i("StatusGet").returncode == 0, timeout=30)
        assert can_i("StatusGet").stdout.startswith("yes (allowed by rule 0)")
        assert can_i("Component.Get", "gain1.gain").returncode == 0
        allowed = can_i("Component.Set", "gain1.gain", "-6")
        assert (allowed.returncode, allowed.stdout.split()[0]) == (0, "yes"), allowed.stderr
        too_loud = can_i("Component.Set", "gain1.gain", "5")
        assert (too_loud.returncode, too_loud.stdout.strip()) == (
            1,
            "no (no rule allows gain1.gain)",
        )
        other = can_i("Component.Set", "mixer.gain", "-6")
        assert other.returncode == 1
        assert can_i("Control.Set", "MasterGain", "0").returncode == 1
        assert can_i("Snapshot.Load", "scenes", "1").returncode == 1
        verdict = qsys.json("can-i", "panel", "gen", "StatusGet")
        assert verdict["allowed"] is True
        assert verdict["core"] == "room"
        denied = qsys("can-i", "panel", "gen", "Component.Set", "gain1.gain", "5", "-o", "yaml")
        assert denied.returncode == 1
        assert yaml.safe_load(denied.stdout)["allowed"] is False
        fails(can_i("Component.Set", "gain1"), "needs COMPONENT.CONTROL")

        # status: the table and both structured forms.
        def summary() -> dict[str, Any] | None:
            items = qsys.json("status")["items"]
            return items[0] if items and items[0]["subjects"] == 2 else None

        room = wait_for("status with two subjects", summary, timeout=30)
        assert room["name"] == "room"
        assert room["host"] == "127.0.0.1"
        assert [p["name"] for p in room["policies"]] == ["panel"]
        assert room["policies"][0]["subjects"] == ["gen", "ops"]
        assert {c["type"] for c in room["conditions"]} >= {"Ready", "GatewayAvailable"}
        as_yaml = qsys("status", "room", "-o", "yaml")
        assert yaml.safe_load(as_yaml.stdout)["items"][0]["name"] == "room"
        text = qsys("status")
        assert text.returncode == 0
        header, row = text.stdout.splitlines()[:2]
        assert header.split()[:3] == ["CORE", "READY", "GATEWAYS"]
        assert row.split()[0] == "room"
        assert "panel" in row
        everywhere = qsys("status", "-A")
        assert everywhere.stdout.split()[0] == "NAMESPACE"
        assert ns in everywhere.stdout

        # call through a port-forward: kwok runs no kubelet streaming, so the forward
        # fails, and says so.
        pod_ip = wait_for("pod IP", lambda: gateway_pod_ip(cluster, ns, "room"))
        forwarded = qsys("call", "room", "StatusGet", "--as", "gen", timeout=90)
        fails(forwarded, "port-forward to svc/room-gateway failed")

        # --direct to the pod IP, served by a real gateway from the rendered config.
        key = must(secret_text(cluster.api, ns, "room-gateway-token-key", "key"))
        gw = StandInGateway(tmp_path, rendered_config(cluster, ns, "room"), pod_ip, key)
        stack.callback(gw.stop)
        gw.start()
        status_call = qsys("call", "room", "StatusGet", "--as", "gen", "--direct")
        assert status_call.returncode == 0, status_call.stderr
        assert json.loads(status_call.stdout)["result"]["State"] == "Active"
        refused = qsys(
            "call",
            "room",
            "Component.Set",
            '{"Name": "gain1", "Controls": [{"Name": "gain", "Value": 5}]}',
            "--as",
            "gen",
            "--direct",
        )
        assert refused.returncode == 1, refused.stderr
        assert json.loads(refused.stdout)["error"]["code"] == -32003
        fails(qsys("call", "room", "StatusGet", "--as", "nobody", "--direct"), '"nobody"')
        fails(qsys("call", "room", "StatusGet", "{bad", "--as", "gen"), "PARAMS is not JSON")

        # audit: kwok serves no pod logs; the error names the pod and the API's answer.
        fails(qsys("audit", "room"), "logs of pod")
        fails(qsys("audit", "room", "--pod", "other"), '"other" is not a gateway')

        # rotate: a new token in the Secret, the operator renders it, the gateway takes it.
        old_config = rendered_config(cluster, ns, "room")
        rotated = qsys.json("token", "rotate", "panel", "gen", "--show")
        new_token = rotated["token"]
        assert new_token != generated
        assert secret_text(cluster.api, ns, "panel-gen-token", "token") == new_token
        quiet = qsys("token", "rotate", "panel", "ops")
        assert quiet.returncode == 0
        assert "rotated" in quiet.stdout
        ops_token = must(secret_text(cluster.api, ns, "panel-ops-token", "token"))
        assert ops_token not in quiet.stdout
        new_config = wait_for(
            "rotation rendered",
            lambda: (c := rendered_config(cluster, ns, "room")) != old_config and c,
        )
        assert isinstance(new_config, str)
        gw.write(new_config)
        wait_for("new token admitted", lambda: gw.rpc(new_token, "StatusGet")[0] == 200)
        assert qsys("call", "room", "StatusGet", "--as", "gen", "--direct").returncode == 0

    # No gateway ready: pods that cannot be scheduled never become endpoints.
    create(
        cluster,
        ns,
        core_body("dark", 1710, gateway={"replicas": 1, "nodeSelector": {"qsys.dev/none": "x"}}),
    )
    create(cluster, ns, policy_body("dark-panel", "dark", [{"name": "late"}]))
    wait_for("dark token", lambda: secret_text(cluster.api, ns, "dark-panel-late-token", "token"))
    wait_for("dark Service", lambda: _service(cluster, ns, "dark-gateway"))
    fails(qsys("call", "dark", "StatusGet", "--as", "late"), 'no gateway ready for QSysCore "dark"')
    assert generated not in operator.output()


def _service(cluster: Cluster, ns: str, name: str) -> bool:
    return any(
        must(s.metadata).name == name
        for s in client.CoreV1Api(cluster.api).list_namespaced_service(ns).items
    )
