"""The real `qsys-operator` process, stand-in gateway processes (both the test kit's,
qsys_testkit) and small API helpers for e2e.

Every process started here is stopped by its owner, whether the test passed or
not; every address dialled is loopback (kwok pod IPs are 127.77.0.0/16).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client

from qsys_testkit import GatewayProcess, OperatorProcess
from qsys_testkit.checkout import REPO
from qsys_testkit.cluster import Cluster, wait_for

GROUP, VERSION = "qsys.dev", "v1alpha1"
PLURALS = {"QSysCore": "qsyscores", "AccessPolicy": "accesspolicies"}


class Operator(OperatorProcess):
    """`qsys-operator` watching one namespace, set up the way the e2e tests need."""

    def __init__(self, cluster: Cluster, namespace: str, log: Path, *args: str) -> None:
        self.namespace = namespace
        env = {
            "QSYS_RESYNC_SECONDS": "1",
            "QSYS_GATEWAY_PROBE_CIDRS": "127.0.0.0/8",
            "QSYS_OPERATOR_NAMESPACE": namespace,
        }
        super().__init__(
            cluster.kubeconfig, ["--namespace", namespace, *args], env=env, log=log, cwd=REPO
        )


@contextlib.contextmanager
def running_operator(cluster: Cluster, namespace: str, log: Path, *args: str) -> Iterator[Operator]:
    with Operator(cluster, namespace, log, *args) as op:
        yield op


class StandInGateway(GatewayProcess):
    """A real `qsys-gateway` started from the operator-rendered config, bound to a pod's IP
    (its files in DIRECTORY/gateway-POD_IP/)."""

    def __init__(self, directory: Path, config_yaml: str, pod_ip: str, token_key: str) -> None:
        """token_key: the core's token key Secret, which the pod would get beside the config."""
        self.pod_ip = pod_ip
        own = directory / f"gateway-{pod_ip}"
        own.mkdir(exist_ok=True)
        super().__init__(self._local(config_yaml), own, token_key=token_key.encode())

    def _local(self, config_yaml: str) -> dict[str, Any]:
        """The rendered config with the pod's address replaced by the stand-in's (its token
        key file is set by `write_config`)."""
        config: dict[str, Any] = yaml.safe_load(config_yaml)
        config["listen"]["host"] = self.pod_ip  # ports stay as rendered
        return config

    def write(self, config_yaml: str) -> None:
        self.write_config(self._local(config_yaml))


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
