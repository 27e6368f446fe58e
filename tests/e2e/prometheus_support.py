"""The pinned Prometheus Operator (hack/tools/prometheus-operator) on the host against the
test cluster: its CRDs from the same module, and the operator process, always stopped."""

from __future__ import annotations

import base64
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import yaml

from qsys_testkit import free_port, stop_process
from qsys_testkit.checkout import REPO, pinned_tool, tool_dir
from qsys_testkit.cluster import Cluster

PO_TOOLS = REPO / "hack" / "tools" / "prometheus-operator"
MONITORING = "monitoring.coreos.com"


def po_crds() -> list[Path]:
    """The Prometheus Operator's CRDs from its (pinned) module."""
    out = subprocess.run(
        [
            "go",
            "list",
            "-m",
            "-f",
            "{{.Dir}}",
            "github.com/prometheus-operator/prometheus-operator",
        ],
        cwd=PO_TOOLS,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return sorted((Path(out.stdout.strip()) / "example" / "prometheus-operator-crd").glob("*.yaml"))


@contextlib.contextmanager
def po_crds_installed(cluster: Cluster) -> Iterator[None]:
    """Applied with kubectl: the CRDs carry YAML 1.1 `=` scalars PyYAML's safe loader refuses.
    Deleted afterwards: other tests expect a cluster without them."""
    kubectl = [str(tool_dir("kube") / "kubectl"), f"--kubeconfig={cluster.kubeconfig}"]
    files = [arg for p in po_crds() for arg in ("-f", str(p))]
    try:
        subprocess.run(
            [*kubectl, "apply", "--server-side", *files],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [*kubectl, "wait", "--for=condition=Established", "--timeout=60s", *files],
            check=True,
            capture_output=True,
            timeout=90,
        )
        yield
    finally:
        subprocess.run(
            [*kubectl, "delete", "--ignore-not-found", "--wait=false", *files],
            check=False,
            capture_output=True,
            timeout=120,
        )


def api_server_flags(kubeconfig: str, directory: Path) -> list[str]:
    """The prometheus-operator has no --kubeconfig: the current context as its TLS flags."""
    cfg = yaml.safe_load(Path(kubeconfig).read_text("utf-8"))
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == cfg["current-context"])
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
    flags = [f"--apiserver={cluster['server']}"]
    for flag, section, key in (
        ("ca-file", cluster, "certificate-authority"),
        ("cert-file", user, "client-certificate"),
        ("key-file", user, "client-key"),
    ):
        if key in section:
            path = Path(section[key])
        else:
            path = directory / f"po-{flag}"
            path.write_bytes(base64.b64decode(section[f"{key}-data"]))
            path.chmod(0o600)
        flags.append(f"--{flag}={path}")
    return flags


@contextlib.contextmanager
def prometheus_operator(
    cluster: Cluster, namespaces: list[str], directory: Path, *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """The prometheus-operator watching `namespaces`, web on a loopback port, its log in
    DIRECTORY/prometheus-operator.log."""
    argv = [
        str(pinned_tool("prometheus-operator", "prometheus-operator")),
        *api_server_flags(cluster.kubeconfig, directory),
        f"--namespaces={','.join(namespaces)}",
        f"--web.listen-address=127.0.0.1:{free_port()}",
        *args,
    ]
    with (directory / "prometheus-operator.log").open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop_process(proc, 20)
