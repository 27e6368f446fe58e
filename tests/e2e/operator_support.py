"""The real `qsys-operator` process, stand-in gateway processes and small API helpers for e2e.

Every process started here is stopped by its owner, whether the test passed or
not; every address dialled is loopback (kwok pod IPs are 127.77.0.0/16).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self, cast

import yaml
from kube_support import REPO, Cluster, must, wait_for
from kubernetes import client, utils
from kubernetes.client.exceptions import ApiException

VENV_BIN = Path(sys.executable).parent
GROUP, VERSION = "qsys.dev", "v1alpha1"
PLURALS = {"QSysCore": "qsyscores", "AccessPolicy": "accesspolicies"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def apply_crds(cluster: Cluster, paths: list[Path] | None = None) -> None:
    ext = client.ApiextensionsV1Api(cluster.api)
    for path in paths or sorted((REPO / "crds").glob("*.yaml")):
        body = yaml.safe_load(path.read_text("utf-8"))
        name = body["metadata"]["name"]
        try:
            current = ext.read_custom_resource_definition(name)
            body["metadata"]["resourceVersion"] = must(current.metadata).resource_version
            ext.replace_custom_resource_definition(name, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            utils.create_from_dict(cluster.api, body)  # type: ignore[no-untyped-call]

        def established(n: str = name) -> bool:
            crd = ext.read_custom_resource_definition(n)
            conds = (crd.status and crd.status.conditions) or []
            return any(c.type == "Established" and c.status == "True" for c in conds)

        wait_for(f"CRD {name} Established", established, timeout=60)


class OperatorProcess:
    """A `qsys-operator` subprocess with a given command line; logs go to a file."""

    def __init__(self, argv: list[str], env: dict[str, str], health_port: int, log: Path) -> None:
        self.argv, self.env, self.health_port, self.log = argv, env, health_port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=REPO
            )
        wait_for("operator liveness", self._alive, timeout=60)
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"operator exited {self.proc.returncode}: {self.output()[-3000:]}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=1
            ) as r:
                ok: bool = r.status == 200
                return ok
        except OSError:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Operator(OperatorProcess):
    """`qsys-operator` watching one namespace, set up the way the e2e tests need."""

    def __init__(self, cluster: Cluster, namespace: str, log: Path, *args: str) -> None:
        self.namespace = namespace
        self.metrics_port = free_port()
        health_port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": cluster.kubeconfig,
            "QSYS_RESYNC_SECONDS": "1",
            "QSYS_GATEWAY_PROBE_CIDRS": "127.0.0.0/8",
            "QSYS_OPERATOR_NAMESPACE": namespace,
            "PYTHONUNBUFFERED": "1",
        }
        argv = [
            str(VENV_BIN / "qsys-operator"),
            "--namespace",
            namespace,
            "--health-address",
            f"127.0.0.1:{health_port}",
            "--metrics-address",
            f"127.0.0.1:{self.metrics_port}",
            *args,
        ]
        super().__init__(argv, env, health_port, log)

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            text: str = r.read().decode()
            return text


@contextlib.contextmanager
def running_operator(cluster: Cluster, namespace: str, log: Path, *args: str) -> Iterator[Operator]:
    op = Operator(cluster, namespace, log, *args)
    try:
        yield op.start()
    finally:
        op.stop()


class StandInGateway:
    """A real `qsys-gateway` started from the operator-rendered config, bound to a pod's IP."""

    def __init__(self, directory: Path, config_yaml: str, pod_ip: str, token_key: str) -> None:
        """token_key: the core's token key Secret, which the pod would get beside the config."""
        self.pod_ip = pod_ip
        self.key_path = directory / f"token-key-{pod_ip}"
        self.key_path.write_text(token_key)
        self.key_path.chmod(0o600)
        config = self._local(config_yaml)
        self.config = config
        self.path = directory / f"gateway-{pod_ip}.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.stderr = directory / f"gateway-{pod_ip}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.pod_ip}:{self.config['listen']['http']}"

    def _local(self, config_yaml: str) -> dict[str, Any]:
        """The rendered config with the pod's paths and address replaced by local ones."""
        config: dict[str, Any] = yaml.safe_load(config_yaml)
        config["listen"]["host"] = self.pod_ip  # ports stay as rendered
        config["auth"]["tokenKeyFile"] = str(self.key_path)
        return config

    def write(self, config_yaml: str) -> None:
        config = self._local(config_yaml)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config))
        os.replace(tmp, self.path)

    def start(self) -> StandInGateway:
        with self.stderr.open("ab") as err:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "qsys-gateway"), "--config", str(self.path)],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.stderr.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as r:
                    ok: bool = r.status == 200
                    return ok
            except OSError:
                return False

        wait_for("stand-in gateway ready", ready, timeout=20)
        return self

    def rpc(self, token: str, method: str, params: Any = None) -> tuple[int, dict[str, Any]]:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}})
        req = urllib.request.Request(
            f"{self.url}/v1/rpc",
            data=body.encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# ---- API helpers ---------------------------------------------------------------


def create(cluster: Cluster, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    api = client.CustomObjectsApi(cluster.api)
    out = cast(
        dict[str, Any],
        api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[body["kind"]], body),
    )
    return out


def get(cluster: Cluster, ns: str, kind: str, name: str) -> dict[str, Any]:
    api = client.CustomObjectsApi(cluster.api)
    out = cast(
        dict[str, Any], api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[kind], name)
    )
    return out


def patch(cluster: Cluster, ns: str, kind: str, name: str, body: dict[str, Any]) -> None:
    api = client.CustomObjectsApi(cluster.api)
    api.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[kind], name, body)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def secret_text(cluster: Cluster, ns: str, name: str, key: str) -> str | None:
    try:
        secret = client.CoreV1Api(cluster.api).read_namespaced_secret(name, ns)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    raw = (secret.data or {}).get(key)
    return base64.b64decode(raw).decode() if raw else None


def wait_condition(
    cluster: Cluster, ns: str, kind: str, name: str, type_: str, status: str, timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get(cluster, ns, kind, name)
        return obj if condition(obj, type_).get("status") == status else None

    return wait_for(f"{kind} {name} {type_}={status}", probe, timeout=timeout)


def core_body(name: str, port: int, replicas: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "QSysCore",
        "metadata": {"name": name},
        "spec": {"core": {"host": "127.0.0.1", "port": port}, "gateway": {"replicas": replicas}}
        | spec,
    }


def policy_body(
    name: str, core: str, subjects: list[dict[str, Any]], **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AccessPolicy",
        "metadata": {"name": name},
        "spec": {
            "coreRef": {"name": core},
            "subjects": subjects,
            "rules": [{"methods": ["StatusGet", "Component.Get*"]}],
        }
        | spec,
    }


def events(cluster: Cluster, ns: str, name: str) -> list[str]:
    items = client.CoreV1Api(cluster.api).list_namespaced_event(ns).items
    return [f"{e.reason}: {e.message}" for e in items if e.involved_object.name == name]


def now() -> float:
    return time.monotonic()
