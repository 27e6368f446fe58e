"""`make demo`: the whole loop on one machine, on real pods, with the examples in examples/.

1. the local Kubernetes cluster (hack/cluster/up.sh: control plane and the real node),
   unless KUBECONFIG is set; the images of `make images`, imported into the node;
2. the CRDs of crds/ and a fresh namespace whose pods run on the real node;
3. the operator, installed by the Helm chart (its image, its ServiceAccount);
4. the Core simulator as a pod behind the Service `core-sim` (the same image,
   `qsys-core-sim`);
5. examples/qsyscore.yaml and examples/accesspolicy.yaml, the Core being `core-sim`;
6. the gateway pods the operator renders, started by the kubelet;
7. the resources' status, one allowed and one denied call from this host to the
   gateway Service's ClusterIP with the token the operator generated, and the
   gateway's audit lines (its pod log).

Every address dialled is a Service's or a pod's (198.18.0.0/15, inside this machine).
With KEEP=1 everything stays up and the demo prints the kubectl and curl lines to
keep playing; `make cluster-down` ends it. Otherwise (and on failure or Ctrl-C) the
namespace is deleted, and the cluster stopped if the demo started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client, config, utils
from kubernetes.client.exceptions import ApiException

from qsys_testkit import http_ok, rpc, wait_accepted, wait_for
from qsys_testkit.checkout import image_names, tool_dir
from qsys_testkit.cluster import ClusterError, LocalCluster
from qsys_testkit.kube import (
    REAL_NODE_ANNOTATIONS,
    RESTRICTED_SECURITY_CONTEXT,
    apply_crds,
    secret_text,
)

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION = "qsys.dev", "v1alpha1"
CLUSTER_UP_TIMEOUT_S = 240


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def info(text: str) -> None:
    print(f"    {text}", flush=True)


# ---- the control plane -----------------------------------------------------------------


@contextlib.contextmanager
def control_plane(keep: bool) -> Iterator[str]:
    """Yields a kubeconfig path: $KUBECONFIG when set (left alone), else the local cluster,
    started when not running and then stopped at the end (unless keep)."""
    given = os.environ.get("KUBECONFIG", "")
    if given:
        step(f"Using the cluster of KUBECONFIG={given} (not started or stopped by the demo)")
        yield given
        return
    step("Starting the local Kubernetes control plane (hack/cluster/up.sh)")
    local = LocalCluster(timeout=CLUSTER_UP_TIMEOUT_S)
    started = False
    try:
        try:
            started = local.up()
        except ClusterError as exc:
            raise RuntimeError(
                f"the local control plane did not start (binaries are built by "
                f"`make cluster-tools`): {exc}"
            ) from exc
        info("started" if started else "already running; reusing it (left running at the end)")
        info(f"KUBECONFIG={local.kubeconfig}")
        yield str(local.kubeconfig)
    finally:
        if started and not keep:
            step("Stopping the local control plane (hack/cluster/down.sh)")
            try:
                local.down()
                info("stopped")
            except ClusterError as exc:
                info(str(exc)[-2000:])


# ---- Kubernetes helpers ----------------------------------------------------------------


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def show_status(obj: dict[str, Any]) -> None:
    meta, status = obj["metadata"], obj.get("status") or {}
    print(f"    {obj['kind']} {meta['namespace']}/{meta['name']}", flush=True)
    for key in ("subjects", "tokenSecrets", "core", "gateway"):
        if key in status:
            info(f"  {key}: {json.dumps(status[key], sort_keys=True)}")
    info(f"  {'CONDITION':<16} {'STATUS':<8} {'REASON':<20} MESSAGE")
    for cond in conditions(obj).values():
        line = f"  {cond['type']:<16} {cond['status']:<8} {cond.get('reason', ''):<20} "
        info(line + cond.get("message", ""))


# ---- the demo --------------------------------------------------------------------------


def tool(group: str, name: str) -> str:
    return str(tool_dir(group) / name)


def run(args: list[str], kubeconfig: str, timeout: float = 240) -> str:
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "KUBECONFIG": kubeconfig},
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def ready_pods(v1: client.CoreV1Api, ns: str, selector: str) -> list[Any]:
    pods: list[Any] = v1.list_namespaced_pod(ns, label_selector=selector).items
    return [
        p
        for p in pods
        if p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


def demo(kubeconfig: str, keep: bool) -> None:
    api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    v1 = client.CoreV1Api(api)
    refs = image_names()
    if not os.environ.get("KUBECONFIG"):
        step("Importing the images of `make images` into the node (hack/cluster/node.sh)")
        try:
            LocalCluster(timeout=300).import_images()
        except ClusterError as exc:
            raise RuntimeError(f"importing the images failed: {exc}") from exc
        for ref in refs.values():
            info(ref)

    step("Installing the CRDs (crds/)")
    apply_crds(api, REPO / "crds")
    info("every CRD of crds/ established")

    ns = f"qsys-demo-{uuid.uuid4().hex[:6]}"
    step(f"Creating namespace {ns} (its pods run on the real node)")
    meta = client.V1ObjectMeta(name=ns, annotations=REAL_NODE_ANNOTATIONS)
    v1.create_namespace(client.V1Namespace(metadata=meta))
    release = f"qsys-{ns.rsplit('-', 1)[1]}"
    try:
        run_in_namespace(api, ns, release, refs, kubeconfig, keep)
    except BaseException:
        keep = False
        raise
    finally:
        if not keep:
            step(f"Cleaning up: release {release} and namespace {ns}")
            helm = [tool("helm", "helm"), "uninstall", release, "--namespace", ns, "--wait"]
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                run([*helm, "--timeout", "60s"], kubeconfig, timeout=90)
            with contextlib.suppress(ApiException):
                v1.delete_namespace(ns)
                with contextlib.suppress(TimeoutError):
                    wait_for(f"namespace {ns} gone", lambda: _gone(v1, ns), timeout=90)
                info("deleted")
        api.close()


def _gone(v1: client.CoreV1Api, ns: str) -> bool:
    try:
        v1.read_namespace(ns)
    except ApiException as exc:
        gone: bool = exc.status == 404
        return gone
    return False


def _deployment(name: str, container: dict[str, Any]) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def run_in_namespace(
    api: client.ApiClient, ns: str, release: str, refs: dict[str, str], kubeconfig: str, keep: bool
) -> None:
    v1, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    core_doc = yaml.safe_load((REPO / "examples" / "qsyscore.yaml").read_text("utf-8"))
    policy_doc = yaml.safe_load((REPO / "examples" / "accesspolicy.yaml").read_text("utf-8"))
    core_name, policy_name = core_doc["metadata"]["name"], policy_doc["metadata"]["name"]

    step("Installing the operator with the Helm chart (charts/qsys-operator)")
    op_repo, _, op_tag = refs["operator"].rpartition(":")
    gw_repo, _, gw_tag = refs["gateway"].rpartition(":")
    values = {
        "image.repository": op_repo,
        "image.tag": op_tag,
        "gatewayImage.repository": gw_repo,
        "gatewayImage.tag": gw_tag,
        "watchNamespaces": f"{{{ns}}}",
        "resyncSeconds": "2",  # a quick status refresh for the demo (default 30)
        "serviceMonitor.enabled": "false",
        "prometheusRule.enabled": "false",
        "crds.enabled": "false",  # applied above, as `make test` shares them between releases
    }
    args = [tool("helm", "helm"), "install", release, str(REPO / "charts" / "qsys-operator")]
    args += ["--namespace", ns, "--wait", "--timeout", "180s"]
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    run(args, kubeconfig)
    info(f"release {release}: operator {refs['operator']}, ServiceAccount {release}-qsys-operator")

    step("Starting the Core simulator as a pod behind the Service core-sim (qsys-core-sim)")
    sim = {
        "name": "core-sim",
        "image": refs["core-sim"],
        "imagePullPolicy": "IfNotPresent",
        "command": ["qsys-core-sim", "--host", "0.0.0.0", "--port", "1710"],
        "ports": [{"name": "qrc", "containerPort": 1710}],
        "readinessProbe": {"tcpSocket": {"port": 1710}, "periodSeconds": 1},
        "securityContext": RESTRICTED_SECURITY_CONTEXT,
    }
    utils.create_from_dict(api, _deployment("core-sim", sim), namespace=ns)  # type: ignore[no-untyped-call]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "core-sim"},
        "spec": {"selector": {"app": "core-sim"}, "ports": [{"name": "qrc", "port": 1710}]},
    }
    utils.create_from_dict(api, service, namespace=ns)  # type: ignore[no-untyped-call]
    wait_for("the simulator pod Ready", lambda: ready_pods(v1, ns, "app=core-sim"), timeout=120)
    info("Ready")

    step("Applying examples/qsyscore.yaml and examples/accesspolicy.yaml")
    panel_token = secrets.token_urlsafe(32)
    v1.create_namespaced_secret(
        ns,
        client.V1Secret(
            # The opt-in marker: the operator uses only Secrets labelled for the use.
            metadata=client.V1ObjectMeta(
                name="room-101-panel-token", labels={"qsys.dev/secret-type": "client-token"}
            ),
            string_data={"token": panel_token},
        ),
    )
    info("Secret room-101-panel-token (the room panel's own token, as the example expects)")
    core_doc["spec"]["core"] = {"host": "core-sim", "port": 1710}
    # The Core is a pod: after the Service's address translation, a pod address.
    core_doc["spec"]["networkPolicy"] = {"coreCIDRs": ["198.18.0.0/16"]}
    core_doc["spec"]["monitoring"] = {"serviceMonitor": {"enabled": False}}
    started = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "qsyscores", core_doc)
    info(f"QSysCore {core_name} (core: the Service core-sim, port 1710)")
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "accesspolicies", policy_doc)
    info(f"AccessPolicy {policy_name}")

    step("Waiting for the gateway pods (started by the kubelet, Ready by its probes)")
    selector = f"app.kubernetes.io/instance={core_name},app.kubernetes.io/name=qsys-gateway"
    replicas = int(core_doc["spec"]["gateway"]["replicas"])
    pods = wait_for(
        "gateway pods Ready",
        lambda: p if len(p := ready_pods(v1, ns, selector)) == replicas else None,
        timeout=180,
    )
    info(f"{replicas} pods Ready {time.monotonic() - started:.1f}s after the apply:")
    for pod in pods:
        info(f"  {pod.metadata.name} {pod.status.pod_ip} on {pod.spec.node_name}")
    token_secret = f"{policy_name}-ai-agent-token"
    token = wait_for(
        f"Secret {token_secret}", lambda: secret_text(api, ns, token_secret, "token"), timeout=60
    )
    info(f"Secret {token_secret} (generated token for subject ai-agent)")
    gateway = f"{core_name}-gateway"
    svc: Any = v1.read_namespaced_service(gateway, ns)
    cluster_ip = svc.spec.cluster_ip
    url = f"http://{cluster_ip}:8080"
    info(f"Service {gateway}: ClusterIP {cluster_ip} (http 8080, qrc 1710, metrics 9090)")

    step(f"Waiting for QSysCore {core_name} Ready (the operator asks the gateway about the Core)")

    def ready(plural: str, name: str) -> dict[str, Any] | None:
        obj = cast(
            dict[str, Any], custom.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)
        )
        return obj if conditions(obj).get("Ready", {}).get("status") == "True" else None

    core = wait_for(f"QSysCore {core_name} Ready", lambda: ready("qsyscores", core_name), 120)
    policy = wait_for(
        f"AccessPolicy {policy_name} Ready", lambda: ready("accesspolicies", policy_name), 60
    )
    # kube-proxy programs a new Service's endpoints a moment after they are ready.
    wait_for(f"the Service answering at {url}", lambda: http_ok(f"{url}/livez"), timeout=60)
    # Ready means rendered: each pod takes the policy up at the kubelet's next sync of
    # its config Secret.
    wait_accepted(url, token)
    step("Status (as `kubectl get -o yaml` would show it)")
    show_status(core)
    show_status(policy)

    calls = [
        (
            "allowed",
            "Component.Set",
            {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain", "Value": -12}]},
            "the policy lets it set gain/mute of Room101 Zone* within -60..0",
        ),
        (
            "denied",
            "Component.Set",
            {"Name": "Room101 Mixer", "Controls": [{"Name": "output.1.gain", "Value": 0}]},
            "no rule lets ai-agent set Room101 Mixer",
        ),
    ]
    for title, method, params, why in calls:
        step(f"The {title} call: ai-agent -> {method} {json.dumps(params)} via {url}")
        info(f"({why})")
        status, body = rpc(url, token, method, params)
        info(f"HTTP {status} {json.dumps(body)}")

    step("The gateway's audit lines (its pods' logs)")

    def audit_lines() -> list[str] | None:
        lines = []
        for pod in ready_pods(v1, ns, selector):
            log = v1.read_namespaced_pod_log(pod.metadata.name, ns)
            lines += [line for line in log.splitlines() if '"decision"' in line]
        return lines if len(lines) >= 2 else None

    for line in wait_for("two audit lines", audit_lines, timeout=30):
        info(line)

    if keep:
        kubectl = tool("kube", "kubectl")
        step("Left running (KEEP=1). To keep playing:")
        info(f"export KUBECONFIG={kubeconfig}")
        info(f"{kubectl} -n {ns} get qsyscores,accesspolicies,pods,services")
        info(f"{kubectl} -n {ns} logs -l {selector} --tail=20")
        info(
            f"TOKEN=$({kubectl} -n {ns} get secret {token_secret} "
            "-o jsonpath='{.data.token}' | base64 -d)"
        )
        info(
            f'curl -s {url}/v1/rpc -H "Authorization: Bearer $TOKEN" '
            '-d \'{"jsonrpc":"2.0","id":1,"method":"StatusGet","params":{}}\''
        )
        info(f"curl -s {url}/healthz")
        info(f"{kubectl} -n {ns} edit accesspolicy {policy_name}   # enforced without a restart")
        info("make cluster-down   # ends it all")


def main() -> int:
    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    keep = os.environ.get("KEEP", "") not in ("", "0")
    print("qsys-operator demo, on real pods", flush=True)
    try:
        with control_plane(keep) as kubeconfig:
            demo(kubeconfig, keep)
    except KeyboardInterrupt:
        print("\ndemo: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"\ndemo: FAILED: {exc}", file=sys.stderr)
        return 1
    if keep:
        print("\nDone: left running (KEEP=1); `make cluster-down` ends it.", flush=True)
    else:
        print("\nDone: everything the demo started is stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
