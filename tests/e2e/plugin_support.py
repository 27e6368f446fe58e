"""`kubectl qsys ...` run by the real kubectl binary, which finds the plugin
`kubectl-qsys` (the package's console script) on PATH."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from kubernetes import client

from qsys_testkit.checkout import tool_dir
from qsys_testkit.cluster import Cluster, must
from qsys_testkit.kube import secret_text
from qsys_testkit.process import executable


class Plugin:
    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.kubectl = str(tool_dir("kube") / "kubectl")
        self.namespace = namespace
        self.env = {
            **os.environ,
            "KUBECONFIG": cluster.kubeconfig,
            "PATH": os.pathsep.join(
                [
                    str(Path(executable("qsys-gateway")).parent),
                    str(tool_dir("kube")),
                    os.environ.get("PATH", ""),
                ]
            ),
        }

    def argv(self, *args: str) -> list[str]:
        return [self.kubectl, "qsys", *args, "-n", self.namespace]

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def json(self, *args: str) -> Any:
        out = self(*args, "-o", "json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


def fails(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """An error: exit code 2 and one `error: ...` on stderr naming each of words."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: "), result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def rendered_config(cluster: Cluster, ns: str, core: str) -> str:
    """The gateway config the operator rendered for `core` (its Secret's text)."""
    return must(secret_text(cluster.api, ns, f"{core}-gateway-config", "gateway.yaml"))


def gateway_pod_ip(cluster: Cluster, ns: str, core: str) -> str | None:
    """The IP of one of `core`'s gateway pods, once one has one."""
    pods = client.CoreV1Api(cluster.api).list_namespaced_pod(
        ns, label_selector=f"app.kubernetes.io/instance={core}"
    )
    ips = [must(p.status).pod_ip for p in pods.items if must(p.status).pod_ip]
    return ips[0] if ips else None
