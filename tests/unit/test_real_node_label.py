"""The label the e2e tests select real-pod nodes by is the one every cluster sets: the
local real node (hack/cluster/node.sh), its add-ons (hack/cluster/addons/) and kind's
worker (kind-config.yaml)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from qsys_testkit.kube import REAL_NODE_LABEL

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "hack" / "cluster"
LABEL = "=".join(REAL_NODE_LABEL)


def test_kind_worker_carries_the_real_node_label() -> None:
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text("utf-8"))
    workers = [n for n in config["nodes"] if n["role"] == "worker"]
    assert workers
    for worker in workers:
        assert worker["labels"] == dict([REAL_NODE_LABEL])


def test_local_node_registers_with_the_label() -> None:
    assert f'--node-labels="{LABEL}"' in (CLUSTER / "node.sh").read_text("utf-8")


def addon_documents(name: str) -> list[dict[str, Any]]:
    text = re.sub(r"\$\{[A-Z_]+\}", "placeholder", (CLUSTER / "addons" / name).read_text("utf-8"))
    return [d for d in yaml.safe_load_all(text) if d]


def test_addons_run_on_the_labelled_node() -> None:
    for name in ("coredns.yaml", "metrics-server.yaml"):
        (deployment,) = [d for d in addon_documents(name) if d["kind"] == "Deployment"]
        spec = deployment["spec"]["template"]["spec"]
        assert spec["nodeSelector"] == dict([REAL_NODE_LABEL])
        key, value = REAL_NODE_LABEL
        toleration = {"key": key, "operator": "Equal", "value": value, "effect": "NoSchedule"}
        assert spec["tolerations"] == [toleration]


def test_every_addon_placeholder_is_a_variable_node_sh_sets() -> None:
    script = (CLUSTER / "node.sh").read_text("utf-8") + (CLUSTER / "lib.sh").read_text("utf-8")
    for path in (CLUSTER / "addons").glob("*.yaml"):
        for name in set(re.findall(r"\$\{([A-Z_]+)\}", path.read_text("utf-8"))):
            assert re.search(rf"(^|\s|local .*){name}=", script, re.M), (path.name, name)
