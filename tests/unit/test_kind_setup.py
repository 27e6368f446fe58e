"""The kind path's pieces that can be checked without Docker: the runtime wrapper
(hack/kind/runc-wrapper, run for real on a bundle with jq), the node network manifest
the node image carries (hack/kind_node.py), and the address plan of kind-config.yaml
and hack/kind/docker.sh (everything inside 198.18.0.0/15, nothing on the real node's
198.18.0.0/16 route but the pods of kind's own nodes)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from unit_support import hack_script

REPO = Path(__file__).resolve().parents[2]
kind_node = hack_script("kind_node")

WRAPPER = REPO / "hack" / "kind" / "runc-wrapper"
ALLOWED = ipaddress.IPv4Network("198.18.0.0/15")
CAPS = ["CAP_CHOWN", "CAP_SYS_RESOURCE", "CAP_NET_ADMIN"]


def _wrapper(*args: str, cwd: Path) -> str:
    """The wrapper with `echo` as runc: the arguments it would pass on."""
    result = subprocess.run(
        [str(WRAPPER), *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd,
        env={**os.environ, "QSYS_KIND_RUNC": "/bin/echo"},
        timeout=30,
    )
    return result.stdout.strip()


def test_wrapper_drops_cap_sys_resource_from_a_bundle(tmp_path: Path) -> None:
    caps = {k: list(CAPS) for k in ("bounding", "effective", "permitted")}
    spec = {"process": {"args": ["sh"], "capabilities": caps}, "hostname": "CAP_SYS_RESOURCE"}
    (tmp_path / "config.json").write_text(json.dumps(spec))
    argv = ["--root", "/run/x", "--log-format", "json", "create", "--bundle", str(tmp_path), "id"]
    assert _wrapper(*argv, cwd=tmp_path) == " ".join(argv)
    after = json.loads((tmp_path / "config.json").read_text())
    for key in ("bounding", "effective", "permitted"):
        assert after["process"]["capabilities"][key] == ["CAP_CHOWN", "CAP_NET_ADMIN"]
    assert after["process"]["args"] == ["sh"]
    assert after["hostname"] == "CAP_SYS_RESOURCE"


def test_wrapper_drops_it_from_an_exec_process_and_leaves_other_commands(tmp_path: Path) -> None:
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["ls"], "capabilities": {"bounding": CAPS}}))
    _wrapper("exec", "--process", str(process), "--detach", "id", cwd=tmp_path)
    assert json.loads(process.read_text())["capabilities"]["bounding"] == [
        "CAP_CHOWN",
        "CAP_NET_ADMIN",
    ]
    untouched = {"process": {"capabilities": {"bounding": CAPS}}}
    (tmp_path / "config.json").write_text(json.dumps(untouched))
    _wrapper("state", "id", cwd=tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == untouched


def _network_documents() -> list[dict[str, Any]]:
    text = kind_node.NETWORK_MANIFEST.format(
        script=textwrap.indent(kind_node.NETWORK_SCRIPT, "    "),
        conflist=textwrap.indent(json.dumps(kind_node.CONFLIST, indent=2), "    "),
        image="qsys.local/kind-network:test",
        service_subnet=kind_node.SERVICE_SUBNET,
    )
    # kind patches the first container of the DaemonSet (CONTROL_PLANE_ENDPOINT).
    assert "would you kindly patch this file" in text
    assert "{{" not in text
    return [d for d in yaml.safe_load_all(text) if d]


def test_node_network_manifest() -> None:
    docs = {d["kind"]: d for d in _network_documents()}
    assert set(docs) == {
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
        "ConfigMap",
        "DaemonSet",
    }
    spec = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    cni, firewall = spec["containers"]
    assert cni["name"] == "cni"
    assert isinstance(cni["env"], list)
    assert cni["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    assert "--run-firewall=true" in firewall["command"]
    assert "--run-router=false" in firewall["command"]
    assert "--run-service-proxy=false" in firewall["command"]
    data = docs["ConfigMap"]["data"]
    conflist = json.loads(data["conflist.json"])
    assert conflist["plugins"][0]["type"] == "ptp"
    assert conflist["plugins"][0]["ipMasq"] is False
    assert "POD_CIDR" in data["conflist.json"]
    assert "/etc/qsys-kind-network/conflist.json" in data["cni.sh"]
    subprocess.run(["sh", "-n"], input=data["cni.sh"], text=True, check=True, timeout=10)


def test_node_images_cover_what_kubeadm_deploys() -> None:
    refs = {name: f"registry.k8s.io/{name}:v1" for name in (*kind_node.STATIC_IMAGES, "pause")}
    configs, names = kind_node.image_configs(refs)
    assert set(configs) == set(names)
    assert names["kind-network"] == kind_node.network_image()
    for name in kind_node.STATIC_IMAGES:
        assert f"--config.entrypoint=/usr/local/bin/{name}" in configs[name]


def test_address_plan_stays_inside_the_allowed_ranges() -> None:
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text("utf-8"))
    net = config["networking"]
    assert net["apiServerAddress"] == "127.0.0.1"
    pods = ipaddress.IPv4Network(net["podSubnet"])
    services = ipaddress.IPv4Network(net["serviceSubnet"])
    docker = (REPO / "hack" / "kind" / "docker.sh").read_text("utf-8")
    subnet, pool = (
        ipaddress.IPv4Network(re.findall(rf"^{name}=(\S+)$", docker, re.M)[0])
        for name in ("NETWORK_SUBNET", "ADDRESS_POOL")
    )
    for net_ in (pods, services, subnet, pool):
        assert net_.subnet_of(ALLOWED), net_
    # The Docker network is a host route: never inside the real node's 198.18.0.0/16,
    # nor in the Service range.
    assert not subnet.overlaps(ipaddress.IPv4Network("198.18.0.0/16"))
    assert not subnet.overlaps(services)
    assert subnet.subnet_of(pool)
    assert not pool.overlaps(services)
    for flag in ("--iptables=false", "--ip6tables=false", "--ip-masq=false", "--bridge=none"):
        assert flag in docker
    assert "--dns 127.0.0.1" in docker


def test_firewall_gets_the_rbac_it_waits_for_and_the_service_range() -> None:
    """kube-router's firewall starts only after its informers sync (Services, Endpoints and
    EndpointSlices among them): without list/watch on them it never programs a policy."""
    docs = {d["kind"]: d for d in _network_documents()}
    granted = {
        (group, resource)
        for rule in docs["ClusterRole"]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        if {"list", "watch"} <= set(rule["verbs"])
    }
    for needed in (
        ("", "pods"),
        ("", "namespaces"),
        ("", "nodes"),
        ("", "services"),
        ("", "endpoints"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.k8s.io", "networkpolicies"),
    ):
        assert needed in granted, needed
    spec = docs["DaemonSet"]["spec"]["template"]["spec"]
    cni, firewall = spec["containers"]
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text("utf-8"))
    assert config["networking"]["serviceSubnet"] == kind_node.SERVICE_SUBNET
    assert f"--service-cluster-ip-range={kind_node.SERVICE_SUBNET}" in firewall["command"]
    # The apiserver's address reaches the firewall through the shared directory.
    handoff = "/run/qsys-kind-network/apiserver"
    assert handoff in kind_node.NETWORK_SCRIPT
    assert handoff in firewall["command"][2]
    mounts = {c["name"]: {m["name"]: m for m in c["volumeMounts"]} for c in (cni, firewall)}
    assert mounts["cni"]["shared"]["mountPath"] == mounts["firewall"]["shared"]["mountPath"]
    assert {"name": "shared", "emptyDir": {}} in spec["volumes"]
    # The host (the default route's gateway) passes as the node; nothing else is marked.
    assert "-s $host -m comment --comment qsys-kind-host" in kind_node.NETWORK_SCRIPT
    assert "ip -4 route show default" in kind_node.NETWORK_SCRIPT


def _node(name: str, ip: str, cidr: str | None, labels: dict[str, str] | None = None) -> Any:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"podCIDR": cidr} if cidr else {},
        "status": {
            "addresses": [
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": ip},
            ]
        },
    }


def test_host_routes_reach_pods_via_their_node_and_services_via_the_worker() -> None:
    nodes = {
        "items": [
            _node("qsys-e2e-worker", "198.19.200.3", "198.18.1.0/24", {"qsys.io/node": "real"}),
            _node("qsys-e2e-control-plane", "198.19.200.2", "198.18.0.0/24"),
        ]
    }
    assert kind_node.host_routes(nodes) == [
        "198.18.0.0/24 198.19.200.2",
        "198.18.1.0/24 198.19.200.3",
        "198.19.0.0/17 198.19.200.3",
    ]
    # No labelled node: the Service range via the first node by name.
    alone = {"items": [_node("qsys-e2e-control-plane", "198.19.200.2", "198.18.0.0/24")]}
    assert kind_node.host_routes(alone)[-1] == "198.19.0.0/17 198.19.200.2"


def test_host_routes_refuse_a_node_not_ready_for_them_or_outside_the_allowed_ranges() -> None:
    with pytest.raises(ValueError, match="no InternalIP or no podCIDR"):
        kind_node.host_routes({"items": [_node("w", "198.19.200.3", None)]})
    with pytest.raises(ValueError, match="no nodes"):
        kind_node.host_routes({"items": []})
    with pytest.raises(ValueError, match=r"outside 198\.18\.0\.0/15"):
        kind_node.host_routes({"items": [_node("w", "198.19.200.3", "10.244.0.0/24")]})
    with pytest.raises(ValueError, match=r"outside 198\.18\.0\.0/15"):
        kind_node.host_routes({"items": [_node("w", "172.18.0.2", "198.18.0.0/24")]})
    with pytest.raises(ValueError, match=r"outside 198\.18\.0\.0/15"):
        kind_node.host_routes(
            {"items": [_node("w", "198.19.200.3", "198.18.0.0/24")]}, "10.96.0.0/12"
        )
