"""`make demo`: the whole loop on one machine, with the examples in examples/.

1. the local Kubernetes control plane (hack/cluster/up.sh), unless KUBECONFIG is set;
2. the CRDs of crds/ and a fresh namespace;
3. the Core simulator (`qsys-core-sim`) on 127.0.0.1;
4. the operator (`qsys-operator`) watching that namespace;
5. examples/qsyscore.yaml and examples/accesspolicy.yaml (the Core's port set to the
   simulator's);
6. a real `qsys-gateway` started from the config Secret the operator rendered, listening
   on a gateway pod's address (kwok hands out loopback pod IPs, 127.77.x.x), so the
   operator's CoreConnected probe reaches it;
7. the resources' status, one allowed and one denied call with the token the operator
   generated, and the gateway's audit lines.

Everything listens on, and dials, loopback only. Whatever happens (failure, Ctrl-C),
every process the demo started is stopped, and the control plane too if the demo
started it. Logs stay in the printed work directory.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml
from kubernetes import client, config, utils
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GROUP, VERSION = "qsys.dev", "v1alpha1"
CLUSTER_UP_TIMEOUT_S = 240
T = TypeVar("T")


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def info(text: str) -> None:
    print(f"    {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll probe until it returns something other than None or False (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback only
            return bool(resp.status == 200)
    except OSError:
        return False


# ---- processes -------------------------------------------------------------------------


class Processes:
    """Subprocesses in their own sessions (Ctrl-C reaches only the demo, which stops them
    in reverse start order)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw
            )
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            info(f"stopped {name}")
        self.procs.clear()


def check_running(name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is not None:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")


# ---- the control plane -----------------------------------------------------------------


def local_kubeconfig() -> Path:
    state = os.environ.get("QSYS_CLUSTER_DIR") or str(REPO / ".cache" / "cluster")
    return Path(state) / "kubeconfig"


def cluster_script(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "hack" / "cluster" / name)],
        capture_output=True,
        text=True,
        timeout=CLUSTER_UP_TIMEOUT_S,
        check=False,
        cwd=REPO,
    )


@contextlib.contextmanager
def control_plane() -> Iterator[str]:
    """Yields a kubeconfig path: $KUBECONFIG when set (left alone), else the local control
    plane, started when not running and then stopped at the end."""
    given = os.environ.get("KUBECONFIG", "")
    if given:
        step(f"Using the cluster of KUBECONFIG={given} (not started or stopped by the demo)")
        yield given
        return
    step("Starting the local Kubernetes control plane (hack/cluster/up.sh)")
    started = False
    try:
        try:
            result = cluster_script("up.sh")
        except subprocess.TimeoutExpired as exc:
            started = True  # partly started: stop whatever is there
            raise RuntimeError(f"hack/cluster/up.sh took over {CLUSTER_UP_TIMEOUT_S}s") from exc
        if result.returncode != 0:
            raise RuntimeError(
                "the local control plane did not start (binaries are built by "
                f"`make cluster-tools`):\n{result.stderr[-3000:]}"
            )
        started = result.stdout.strip() == "started"
        info("started" if started else "already running; reusing it (left running at the end)")
        info(f"KUBECONFIG={local_kubeconfig()}")
        yield str(local_kubeconfig())
    finally:
        if started:
            step("Stopping the local control plane (hack/cluster/down.sh)")
            done = cluster_script("down.sh")
            info("stopped" if done.returncode == 0 else done.stderr[-2000:])


# ---- Kubernetes helpers ----------------------------------------------------------------


def apply_crds(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    for path in sorted((REPO / "crds").glob("*.yaml")):
        body = yaml.safe_load(path.read_text("utf-8"))
        name = body["metadata"]["name"]
        try:
            current = ext.read_custom_resource_definition(name)
            assert current.metadata is not None
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            ext.replace_custom_resource_definition(name, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            utils.create_from_dict(api, body)  # type: ignore[no-untyped-call]

        def established(n: str = name) -> bool:
            crd = ext.read_custom_resource_definition(n)
            conds = (crd.status and crd.status.conditions) or []
            return any(c.type == "Established" and c.status == "True" for c in conds)

        wait_for(f"CRD {name} Established", established)
        info(f"{path.relative_to(REPO)}: {name} established")


def secret_text(v1: client.CoreV1Api, ns: str, name: str, key: str) -> str | None:
    try:
        secret = v1.read_namespaced_secret(name, ns)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    raw = (secret.data or {}).get(key)
    return base64.b64decode(raw).decode() if raw else None


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


def rpc(url: str, token: str, method: str, params: Any) -> tuple[int, str]:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    req = urllib.request.Request(  # noqa: S310 - loopback only
        f"{url}/v1/rpc",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


# ---- the demo --------------------------------------------------------------------------


def demo(kubeconfig: str, work: Path, procs: Processes) -> None:
    api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    v1, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    core_doc = yaml.safe_load((REPO / "examples" / "qsyscore.yaml").read_text("utf-8"))
    policy_doc = yaml.safe_load((REPO / "examples" / "accesspolicy.yaml").read_text("utf-8"))

    step("Installing the CRDs (crds/)")
    apply_crds(api)

    ns = f"qsys-demo-{uuid.uuid4().hex[:6]}"
    step(f"Creating namespace {ns}")
    v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    try:
        run_in_namespace(api, v1, custom, ns, core_doc, policy_doc, work, procs, kubeconfig)
    finally:
        step(f"Cleaning up: namespace {ns} and the processes the demo started")
        with contextlib.suppress(ApiException):
            v1.delete_namespace(ns)
            with contextlib.suppress(RuntimeError):  # bounded: the operator is still running
                wait_for(f"namespace {ns} gone", lambda: _gone(v1, ns), timeout=30)
        procs.stop_all()
        api.close()


def _gone(v1: client.CoreV1Api, ns: str) -> bool:
    try:
        v1.read_namespace(ns)
    except ApiException as exc:
        gone: bool = exc.status == 404
        return gone
    return False


def run_in_namespace(
    api: client.ApiClient,
    v1: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    ns: str,
    core_doc: dict[str, Any],
    policy_doc: dict[str, Any],
    work: Path,
    procs: Processes,
    kubeconfig: str,
) -> None:
    core_name, policy_name = core_doc["metadata"]["name"], policy_doc["metadata"]["name"]

    sim_port = free_port()
    step(f"Starting the Core simulator on 127.0.0.1:{sim_port} (qsys-core-sim)")
    sim_log = work / "simulator.log"
    sim = procs.start(
        "simulator",
        [str(BIN / "qsys-core-sim"), "--host", "127.0.0.1", "--port", str(sim_port)],
        sim_log,
    )

    def sim_up() -> bool:
        check_running("qsys-core-sim", sim, sim_log)
        try:
            with socket.create_connection(("127.0.0.1", sim_port), 0.5):
                return True
        except OSError:
            return False

    wait_for("the simulator", sim_up, timeout=20)

    step(f"Starting the operator (qsys-operator --namespace {ns})")
    health, metrics = free_port(), free_port()
    op_log = work / "operator.log"
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig,
        "QSYS_RESYNC_SECONDS": "2",  # a quick status refresh for the demo (default 30)
        "QSYS_GATEWAY_PROBE_CIDRS": "127.0.0.0/8",  # the probe dials loopback pod IPs only
        "QSYS_OPERATOR_NAMESPACE": ns,
        "PYTHONUNBUFFERED": "1",
    }
    operator = procs.start(
        "operator",
        [
            str(BIN / "qsys-operator"),
            "--namespace",
            ns,
            "--standalone",
            "--health-address",
            f"127.0.0.1:{health}",
            "--metrics-address",
            f"127.0.0.1:{metrics}",
        ],
        op_log,
        env=env,
        cwd=REPO,
    )

    def operator_alive() -> bool:
        check_running("qsys-operator", operator, op_log)
        return http_ok(f"http://127.0.0.1:{health}/healthz")

    wait_for("operator liveness", operator_alive, timeout=30)
    info(f"healthy; log: {op_log}")

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
    core_doc["spec"]["core"]["port"] = sim_port
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "qsyscores", core_doc)
    info(f"QSysCore {core_name} (core 127.0.0.1:{sim_port}, the simulator)")
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "accesspolicies", policy_doc)
    info(f"AccessPolicy {policy_name}")

    step("Waiting for the operator's children and the generated token")
    apps = client.AppsV1Api(api)
    net, pdb = client.NetworkingV1Api(api), client.PolicyV1Api(api)

    def _read(fn: Callable[..., Any], name: str) -> Any:
        try:
            return fn(name, ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    gateway, config_secret = f"{core_name}-gateway", f"{core_name}-gateway-config"
    for kind, fn, child in (
        ("Deployment", apps.read_namespaced_deployment, gateway),
        ("Service", v1.read_namespaced_service, gateway),
        ("Secret", v1.read_namespaced_secret, config_secret),
        ("NetworkPolicy", net.read_namespaced_network_policy, gateway),
        ("PodDisruptionBudget", pdb.read_namespaced_pod_disruption_budget, gateway),
    ):

        def present(f: Callable[..., Any] = fn, c: str = child) -> Any:
            return _read(f, c)

        wait_for(f"{kind} {child}", present, timeout=60)
        info(f"{kind} {child}")
    token_secret = f"{policy_name}-ai-agent-token"
    token = wait_for(
        f"Secret {token_secret}", lambda: secret_text(v1, ns, token_secret, "token"), timeout=60
    )
    info(f"Secret {token_secret} (generated token for subject ai-agent)")
    gateway_yaml = wait_for(
        "rendered gateway.yaml",
        lambda: secret_text(v1, ns, f"{core_name}-gateway-config", "gateway.yaml"),
    )

    def pod_ip() -> str | None:
        pods = v1.list_namespaced_pod(ns, label_selector=f"app.kubernetes.io/instance={core_name}")
        ips = sorted(p.status.pod_ip for p in pods.items if p.status and p.status.pod_ip)
        return ips[0] if ips else None

    ip = wait_for("a gateway pod IP", pod_ip, timeout=60)
    if not ip.startswith("127."):
        raise RuntimeError(f"pod IP {ip} is not loopback; the demo only dials loopback")

    step(f"Starting qsys-gateway from Secret {core_name}-gateway-config, on pod IP {ip}")
    gw_config = yaml.safe_load(gateway_yaml)
    gw_config["listen"]["host"] = ip  # ports and policy stay as rendered
    key_path = work / "token-key"  # the pod gets it beside gateway.yaml
    key_path.write_text(secret_text(v1, ns, f"{core_name}-gateway-token-key", "key") or "")
    key_path.chmod(0o600)
    gw_config["auth"]["tokenKeyFile"] = str(key_path)
    gw_path = work / "gateway.yaml"
    gw_path.write_text(yaml.safe_dump(gw_config))
    audit_log, gw_log = work / "gateway-audit.log", work / "gateway.log"
    with gw_log.open("ab") as err, audit_log.open("ab") as out:
        gw_proc = subprocess.Popen(
            [str(BIN / "qsys-gateway"), "--config", str(gw_path)],
            stdout=out,  # the audit trail (audit.path "-")
            stderr=err,
            start_new_session=True,
        )
    procs.procs.append(("gateway", gw_proc))
    url = f"http://{ip}:{gw_config['listen']['http']}"

    def gateway_ready() -> bool:
        check_running("qsys-gateway", gw_proc, gw_log)
        return http_ok(f"{url}/readyz")

    wait_for("gateway ready", gateway_ready, timeout=30)
    info(f"ready at {url} (config: {gw_path})")

    step(f"Waiting for QSysCore {core_name} Ready (the operator asks the gateway about the Core)")

    def core_ready() -> dict[str, Any] | None:
        check_running("qsys-operator", operator, op_log)
        obj = cast(
            dict[str, Any],
            custom.get_namespaced_custom_object(GROUP, VERSION, ns, "qsyscores", core_name),
        )
        return obj if conditions(obj).get("Ready", {}).get("status") == "True" else None

    core = wait_for(f"QSysCore {core_name} Ready", core_ready, timeout=90)

    def policy_ready() -> dict[str, Any] | None:
        obj = cast(
            dict[str, Any],
            custom.get_namespaced_custom_object(GROUP, VERSION, ns, "accesspolicies", policy_name),
        )
        return obj if conditions(obj).get("Ready", {}).get("status") == "True" else None

    policy = wait_for(f"AccessPolicy {policy_name} Ready", policy_ready, timeout=60)
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
        step(f"The {title} call: ai-agent -> {method} {json.dumps(params)}")
        info(f"({why})")
        status, text = rpc(url, token, method, params)
        info(f"HTTP {status} {text.strip()}")

    step("The gateway's audit lines")
    wait_for("two audit lines", lambda: len(audit_log.read_text().splitlines()) >= 2, timeout=10)
    for line in audit_log.read_text().splitlines():
        info(line)


def main() -> int:
    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="qsys-demo-"))
    procs = Processes()
    print(f"qsys-operator demo (logs in {work})", flush=True)
    try:
        with control_plane() as kubeconfig:
            try:
                demo(kubeconfig, work, procs)
            finally:
                procs.stop_all()
    except KeyboardInterrupt:
        print("\ndemo: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"\ndemo: FAILED: {exc}\nlogs: {work}", file=sys.stderr)
        return 1
    print(f"\nDone: everything the demo started is stopped. Logs: {work}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
