"""The product on real pods: the operator installed by the Helm chart (its image, its
ServiceAccount), the Core simulator as a pod behind a Service, the example QSysCore
and AccessPolicy pointing at that Service by name, and the gateway pods the operator
renders, started by the kubelet from the built image. Clients on the host call the
gateway Service's ClusterIP (198.19.0.0/16) over HTTP, WebSocket and raw QRC.

The tests share one installation (module scope) and run in file order: later ones
change it (policy edit, Core outage, rollout, operator restart). The drain is
test_real_gateway_drain.py's (it needs the node alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes import client
from node_support import (
    apply_example_policy,
    images,
    is_ready,
    operator_release,
    real_namespace,
    real_node_names,
    run_pod,
    simulated_core,
    start_simulator,
    tool,
    wait_answering,
    wait_pods_ready,
)
from operator_support import condition, get, patch, wait_condition
from plugin_support import Plugin, fails

from qsys_protocol.qrc.client import QrcClient
from qsys_testkit.checkout import REPO
from qsys_testkit.cluster import Cluster, must, wait_for
from qsys_testkit.kube import secret_text

pytestmark = [
    pytest.mark.node_lane("c"),
    pytest.mark.e2e,
    pytest.mark.usefixtures("real_node"),
    pytest.mark.tools("helm"),
]

CHART = REPO / "charts" / "qsys-operator"
CORE = "auditorium"
POLICY = "auditorium-operators"
GATEWAY = f"{CORE}-gateway"
GATEWAY_SELECTOR = f"app.kubernetes.io/instance={CORE},app.kubernetes.io/name=qsys-gateway"
PANEL_TOKEN = secrets.token_hex(32)
TIMEOUT_S = 180


@dataclass
class Stack:
    cluster: Cluster
    ns: str
    release: str
    gateway_ip: str

    @property
    def url(self) -> str:
        return f"http://{self.gateway_ip}:8080"

    def token(self) -> str:
        token = secret_text(self.cluster.api, self.ns, f"{POLICY}-ai-agent-token", "token")
        assert token
        return token

    def rpc(
        self, method: str, params: Any = None, token: str | None = None, url: str | None = None
    ) -> tuple[int, Any]:
        """One call through the Service, or to one pod's `url`."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}})
        req = urllib.request.Request(
            f"{url or self.url}/v1/rpc",
            data=body.encode(),
            headers={
                "Authorization": f"Bearer {token or self.token()}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as r:
                out: dict[str, Any] = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            out = json.loads(exc.read() or b"{}")
        return out

    def gateway_pods(self) -> list[client.V1Pod]:
        pods = client.CoreV1Api(self.cluster.api).list_namespaced_pod(
            self.ns, label_selector=GATEWAY_SELECTOR
        )
        return [p for p in pods.items if must(p.metadata).deletion_timestamp is None]


@pytest.fixture(scope="module")
def stack(cluster: Cluster) -> Iterator[Stack]:
    with installed_stack(cluster) as installed:
        yield installed


@contextlib.contextmanager
def installed_stack(cluster: Cluster) -> Iterator[Stack]:
    """The chart's operator, the Core simulator and a QSysCore with 2 Ready gateway pods
    answering through their Service, in a namespace of their own (also
    test_real_gateway_drain.py's)."""
    with real_namespace(cluster) as ns, operator_release(cluster, ns) as release:
        start_simulator(cluster, ns)
        core = client.CoreV1Api(cluster.api)
        qsyscore = simulated_core(CORE)
        custom = client.CustomObjectsApi(cluster.api)
        started = time.monotonic()
        custom.create_namespaced_custom_object("qsys.dev", "v1alpha1", ns, "qsyscores", qsyscore)
        apply_example_policy(cluster, ns, PANEL_TOKEN)
        wait_pods_ready(cluster, ns, GATEWAY_SELECTOR, 2, timeout=TIMEOUT_S)
        print(f"QSysCore applied -> 2 Ready gateway pods: {time.monotonic() - started:.1f}s")
        svc = core.read_namespaced_service(GATEWAY, ns)
        stack = Stack(cluster, ns, release, must(must(svc.spec).cluster_ip))
        wait_condition(cluster, ns, "QSysCore", CORE, "CoreConnected", "True", timeout=TIMEOUT_S)
        wait_answering("the gateway Service", lambda: stack.rpc("StatusGet")[0] == 200)
        yield stack


def _first_process(cluster: Cluster, pod: client.V1Pod) -> tuple[str, str]:
    """/proc/1/status and /proc/1/mountinfo of the pod's container: its first process, as
    the kernel sees it (read through `kubectl exec`, on any cluster)."""
    read = (
        "import sys; sys.stdout.write("
        "open('/proc/1/status').read() + chr(0) + open('/proc/1/mountinfo').read())"
    )
    meta = must(pod.metadata)
    kubectl = str(tool("kube", "kubectl"))
    out = subprocess.run(
        [kubectl, "exec", "-n", must(meta.namespace), must(meta.name), "--", "python3", "-c", read],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "KUBECONFIG": cluster.kubeconfig},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    status, _, mountinfo = out.stdout.partition("\0")
    return status, mountinfo


def test_gateway_pods_run_non_root_read_only_without_capabilities(stack: Stack) -> None:
    pods = stack.gateway_pods()
    assert len(pods) == 2
    real = real_node_names(stack.cluster)
    for pod in pods:
        spec = must(pod.spec)
        assert spec.node_name in real
        (container,) = spec.containers
        sc = must(container.security_context)
        assert sc.read_only_root_filesystem is True
        assert sc.allow_privilege_escalation is False
        assert must(sc.capabilities).drop == ["ALL"]
        assert not must(sc.capabilities).add
        # Ready through the kubelet's own probes.
        (status,) = must(pod.status).container_statuses or []
        assert status.ready
        assert status.restart_count == 0
        # From inside: the container's first process, as the kernel sees it.
        status_text, mountinfo = _first_process(stack.cluster, pod)
        fields = dict(line.split(":", 1) for line in status_text.splitlines() if ":" in line)
        uids = fields["Uid"].split()
        assert uids[0] != "0", fields["Uid"]
        assert len(set(uids)) == 1, fields["Uid"]
        for cap in ("CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(fields[cap], 16) == 0, (cap, fields[cap])
        assert fields["NoNewPrivs"].strip() == "1"
        root = [line.split() for line in mountinfo.splitlines() if line.split()[4] == "/"]
        assert root, "no root mount"
        assert "ro" in root[0][5].split(","), root


def test_host_clients_reach_the_gateway_service_over_http_websocket_and_qrc(
    stack: Stack,
) -> None:
    code, reply = stack.rpc("StatusGet")
    assert code == 200, reply
    assert reply["result"]["State"]
    assert stack.health()["status"] == "healthy"

    async def ws_and_qrc() -> tuple[Any, Any]:
        headers = {"Authorization": f"Bearer {stack.token()}"}
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"ws://{stack.gateway_ip}:8080/v1/ws", headers=headers) as ws,
        ):
            await ws.send_json({"jsonrpc": "2.0", "id": 7, "method": "StatusGet", "params": {}})
            async with asyncio.timeout(10):
                while True:
                    msg = await ws.receive_json()
                    if msg.get("id") == 7:
                        break
        qrc = await QrcClient.connect(stack.gateway_ip, 1710)
        try:
            logon = await qrc.call("Logon", {"User": "ai-agent", "Password": stack.token()})
            status = await qrc.call("StatusGet", {})
        finally:
            await qrc.close()
        assert logon is True
        return msg, status

    ws_reply, qrc_status = asyncio.run(ws_and_qrc())
    assert ws_reply["result"]["State"], ws_reply
    assert qrc_status["State"], qrc_status


GAIN = {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain"}]}


def _bounded(read: Callable[[], str], timeout: float) -> str:
    """`read()` in a thread, failing after `timeout` s instead of blocking the test."""
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(read()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert out, f"nothing read in {timeout} s"
    return out[0]


def _interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def _following(qsys: Plugin, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`kubectl qsys audit auditorium -f ARGS` running; killed at the end if still running."""
    proc = subprocess.Popen(
        qsys.argv("audit", CORE, "-f", *args),
        env=qsys.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a run started in the background inherits SIGINT ignored
        preexec_fn=_interruptible,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _stopped_by(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    """`sig` ends the follow cleanly: exit 0, nothing on stderr, within 10 s."""
    proc.send_signal(sig)
    assert proc.wait(10) == 0
    assert proc.stderr is not None
    assert proc.stderr.read() == ""


def test_kubectl_qsys_call_and_audit_on_real_gateway_pods(stack: Stack) -> None:
    """`kubectl qsys call` through a real port-forward (apiserver -> kubelet -> containerd)
    to the gateway Service, and `audit` from both gateway pods' logs, merged and followed."""
    qsys = Plugin(stack.cluster, stack.ns)
    gain = json.dumps(GAIN)
    allowed = qsys("call", CORE, "Component.Get", gain, "--as", "ai-agent", timeout=90)
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["result"]["Controls"][0]["Name"] == "gain"
    # Writes are audited (reads only with spec.audit.logReads): one allowed, one refused.
    quiet = {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain", "Value": -6}]}
    written = qsys("call", CORE, "Component.Set", json.dumps(quiet), "--as", "ai-agent")
    assert written.returncode == 0, written.stderr
    assert json.loads(written.stdout)["result"] is True
    loud = {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain", "Value": 5}]}
    refused = qsys("call", CORE, "Component.Set", json.dumps(loud), "--as", "room-101-panel")
    assert refused.returncode == 1, refused.stderr
    assert json.loads(refused.stdout)["error"]["code"] == -32003
    as_yaml = qsys("call", CORE, "StatusGet", "--as", "room-101-panel", "-o", "yaml")
    assert as_yaml.returncode == 0, as_yaml.stderr
    assert yaml.safe_load(as_yaml.stdout)["result"]["State"]
    context = yaml.safe_load(Path(stack.cluster.kubeconfig).read_text("utf-8"))["current-context"]
    named = qsys("call", CORE, "StatusGet", "--as", "ai-agent", "--context", context)
    assert named.returncode == 0, named.stderr
    fails(qsys("call", CORE, "StatusGet", "--as", "ai-agent", "--context", "nope"), "nope")
    elsewhere = Plugin(stack.cluster, "default")("call", CORE, "StatusGet", "--as", "ai-agent")
    fails(elsewhere, f'QSysCore "{CORE}" in namespace "default" not found')
    fails(
        qsys("call", CORE, "StatusGet", "--as", "ai-agent", "--policy", "nope"),
        'AccessPolicy "nope"',
        "not found",
    )
    fails(qsys("call", CORE, "StatusGet", "--as", "nobody"), 'subject "nobody"')

    pods = {must(p.metadata).name for p in stack.gateway_pods()}

    last: list[str] = []

    def both_calls() -> list[dict[str, Any]] | None:
        out = qsys("audit", CORE, "-o", "json")
        assert out.returncode == 0, out.stderr
        last[:] = [out.stdout[-3000:]]
        records = [json.loads(line) for line in out.stdout.splitlines()]
        methods = {(r["subject"], r["method"], r["decision"]) for r in records}
        wanted = {
            ("ai-agent", "Component.Set", "allow"),
            ("room-101-panel", "Component.Set", "deny"),
        }
        return records if wanted <= methods else None

    try:
        records = wait_for("the plugin's calls in the audit", both_calls, timeout=30)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last output:\n{last}") from None
    assert {r["pod"] for r in records} <= pods
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    panel = qsys("audit", CORE, "--subject", "room-101-panel", "-o", "yaml")
    assert panel.returncode == 0, panel.stderr
    docs = [d for d in yaml.safe_load_all(panel.stdout) if d]
    assert docs
    assert {d["subject"] for d in docs} == {"room-101-panel"}
    denied = [d for d in docs if d["method"] == "Component.Set"]
    assert denied[-1]["decision"] == "deny"
    text = qsys("audit", CORE, "--subject", "ai-agent")
    assert text.stdout.splitlines()[0].split()[:3] == ["TIME", "SUBJECT", "METHOD"]
    assert all(line.split()[1] == "ai-agent" for line in text.stdout.splitlines()[1:])

    # --follow over both pods: a new call's line arrives, then Ctrl-C ends it (exit 0).
    marker = f"follow-{secrets.token_hex(4)}"
    seen: list[dict[str, Any]] = []
    arrived = threading.Event()
    with _following(qsys, "--subject", "ai-agent", "-o", "json") as follow:

        def read() -> None:
            assert follow.stdout is not None
            for line in follow.stdout:
                seen.append(json.loads(line))
                if any(marker in str(t) for t in seen[-1].get("targets") or []):
                    arrived.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for("the follow's first lines", lambda: len(seen) > 0, timeout=30)
        # A refused write (audited): the policy names no component `follow-...`.
        marked = {"Name": marker, "Controls": [{"Name": "gain", "Value": -6}]}
        called = stack.rpc("Component.Set", marked)
        assert called[1]["error"]["code"] == -32003, called
        assert arrived.wait(30), seen[-5:]
        assert {r["subject"] for r in seen} == {"ai-agent"}
        _stopped_by(follow, signal.SIGINT)
    reader.join(10)

    # SIGTERM (a supervisor's stop) ends a follow the same way; --pod follows one pod.
    one_pod = records[-1]["pod"]  # a pod whose log holds audit lines
    with _following(qsys, "--pod", one_pod, "-o", "yaml") as term:
        lines = term.stdout
        assert lines is not None
        first = _bounded(lambda: lines.readline(), 30)
        assert first.strip() == "---", first
        _stopped_by(term, signal.SIGTERM)

    # No gateway ready: a core whose gateway pods cannot be scheduled.
    dark = simulated_core("dark", {"replicas": 1, "nodeSelector": {"qsys.dev/none": "x"}})
    policy = {
        "apiVersion": "qsys.dev/v1alpha1",
        "kind": "AccessPolicy",
        "metadata": {"name": "dark-panel"},
        "spec": {
            "coreRef": {"name": "dark"},
            "subjects": [{"name": "late"}],
            "rules": [{"methods": ["StatusGet"]}],
        },
    }
    custom = client.CustomObjectsApi(stack.cluster.api)
    custom.create_namespaced_custom_object("qsys.dev", "v1alpha1", stack.ns, "qsyscores", dark)
    custom.create_namespaced_custom_object(
        "qsys.dev", "v1alpha1", stack.ns, "accesspolicies", policy
    )
    try:
        wait_for(
            "the dark token",
            lambda: secret_text(stack.cluster.api, stack.ns, "dark-panel-late-token", "token"),
            timeout=60,
        )
        dark_call = qsys("call", "dark", "StatusGet", "--as", "late")
        fails(dark_call, 'no gateway ready for QSysCore "dark"')
    finally:
        custom.delete_namespaced_custom_object(
            "qsys.dev", "v1alpha1", stack.ns, "accesspolicies", "dark-panel"
        )
        custom.delete_namespaced_custom_object(
            "qsys.dev", "v1alpha1", stack.ns, "qsyscores", "dark"
        )


def test_access_policy_edit_is_enforced_without_restart(stack: Stack) -> None:
    """The edit reaches running pods through the Secret volume and the gateway's reload:
    a WebSocket opened before it stays open and is refused afterwards; no pod restarts."""
    before = {must(p.metadata).name for p in stack.gateway_pods()}
    assert stack.rpc("Component.Get", GAIN)[0] == 200

    async def across_the_edit() -> tuple[Any, Any]:
        headers = {"Authorization": f"Bearer {stack.token()}"}
        url = f"ws://{stack.gateway_ip}:8080/v1/ws"
        async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:

            async def call(rid: int) -> Any:
                await ws.send_json(
                    {"jsonrpc": "2.0", "id": rid, "method": "Component.Get", "params": GAIN}
                )
                async with asyncio.timeout(10):
                    while True:
                        msg = await ws.receive_json()
                        if msg.get("id") == rid:
                            return msg

            first = await call(1)
            policy = get(stack.cluster, stack.ns, "AccessPolicy", POLICY)
            rules = [r for r in policy["spec"]["rules"] if "Component.Get" not in r["methods"]]
            rules.append({"methods": ["StatusGet"], "components": ["*"], "controls": ["*"]})
            patch(stack.cluster, stack.ns, "AccessPolicy", POLICY, {"spec": {"rules": rules}})
            deadline = time.monotonic() + 120
            rid = 2
            while "error" not in (last := await call(rid)) and time.monotonic() < deadline:
                rid += 1
                await asyncio.sleep(0.5)
            assert not ws.closed
            return first, last

    first, last = asyncio.run(across_the_edit())
    assert "result" in first, first
    assert "error" in last, last
    # Each pod reloads when the kubelet refreshes its Secret volume, pods at different
    # moments: wait for every pod, asked directly, to refuse.
    for pod in stack.gateway_pods():
        url = f"http://{must(pod.status).pod_ip}:8080"
        wait_for(
            f"{must(pod.metadata).name} refuses Component.Get",
            lambda url=url: stack.rpc("Component.Get", GAIN, url=url)[0] == 403,  # type: ignore[misc]
            timeout=120,
        )
    assert stack.rpc("Component.Get", GAIN)[0] == 403
    assert stack.rpc("StatusGet")[0] == 200
    after = stack.gateway_pods()
    assert {must(p.metadata).name for p in after} == before
    for pod in after:
        (status,) = must(pod.status).container_statuses or []
        assert status.restart_count == 0


def test_core_outage_degrades_and_recovers(stack: Stack) -> None:
    apps = client.AppsV1Api(stack.cluster.api)
    apps.patch_namespaced_deployment_scale("core-sim", stack.ns, {"spec": {"replicas": 0}})
    wait_condition(stack.cluster, stack.ns, "QSysCore", CORE, "CoreConnected", "False", timeout=120)
    wait_for("gateway health degraded", lambda: stack.health().get("status") == "degraded", 60)
    # The gateway pods stay Ready, in the Service.
    endpoints = client.DiscoveryV1Api(stack.cluster.api).list_namespaced_endpoint_slice(
        stack.ns, label_selector=f"kubernetes.io/service-name={GATEWAY}"
    )
    ready = [e for s in endpoints.items for e in s.endpoints or [] if must(e.conditions).ready]
    assert len(ready) == 2, ready
    apps.patch_namespaced_deployment_scale("core-sim", stack.ns, {"spec": {"replicas": 1}})
    wait_condition(stack.cluster, stack.ns, "QSysCore", CORE, "CoreConnected", "True", timeout=120)
    wait_for("gateway health healthy", lambda: stack.health().get("status") == "healthy", 60)
    # CoreConnected needs one connected pod; each pod reconnects after its own back-off
    # (at most 30 s): recovered means every pod, asked directly, answers again.
    for pod in stack.gateway_pods():
        url = f"http://{must(pod.status).pod_ip}:8080"
        wait_for(
            f"{must(pod.metadata).name} answers StatusGet",
            lambda url=url: stack.rpc("StatusGet", url=url)[0] == 200,  # type: ignore[misc]
            timeout=90,
        )
    assert stack.rpc("StatusGet")[0] == 200


def test_rollout_while_a_client_keeps_calling_fails_no_call(stack: Stack) -> None:
    token = stack.token()
    results: list[int] = []
    failures: list[str] = []
    stop = threading.Event()
    started = time.monotonic()

    def caller() -> None:
        while not stop.is_set() and len(results) < 20000:
            at = time.monotonic() - started
            try:
                status, body = stack.rpc("StatusGet", token=token)
            except OSError as exc:
                status, body = -1, {"error": {"message": repr(exc)}}
            results.append(status)
            if status != 200:
                failures.append(f"{at:.1f}s: {status} {body.get('error')}")
            time.sleep(0.2)  # 5 calls/s: inside the example policy's rate limit

    before = {must(p.metadata).name for p in stack.gateway_pods()}
    thread = threading.Thread(target=caller)
    thread.start()
    try:
        patch(
            stack.cluster,
            stack.ns,
            "QSysCore",
            CORE,
            {"spec": {"gateway": {"podAnnotations": {"e2e/rollout": str(time.time())}}}},
        )

        def rolled() -> bool:
            pods = stack.gateway_pods()
            names = {must(p.metadata).name for p in pods}
            ready = [p for p in pods if is_ready(p)]
            return len(pods) == 2 and len(ready) == 2 and not names & before

        wait_for("the rollout to finish", rolled, timeout=TIMEOUT_S)
        time.sleep(2)
    finally:
        stop.set()
        thread.join(30)
    failed = [r for r in results if r != 200]
    assert len(results) > 20, len(results)
    assert not failed, f"{len(failed)} of {len(results)} calls failed: {failures}"


def test_network_policy_admits_pods_of_its_namespace_only(stack: Stack) -> None:
    image = images()["gateway"]
    script = f"""
import json, sys, urllib.request
req = urllib.request.Request("http://{GATEWAY}.{stack.ns}.svc.cluster.local:8080/livez")
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print(r.status)
except Exception as exc:
    print("failed:", exc)
    sys.exit(3)
"""
    attempts = itertools.count()

    def allowed() -> bool:
        # kube-router programs a new pod's rules (the rollout's) within seconds.
        code, _ = run_pod(stack.cluster, stack.ns, f"allowed-{next(attempts)}", image, script)
        return code == 0

    wait_for("a pod of the gateway's namespace admitted", allowed, timeout=120)
    with real_namespace(stack.cluster) as other:
        code, log = run_pod(stack.cluster, other, "outside-client", image, script)
        assert code == 3, log


def test_operator_pod_restart_mid_reconcile(stack: Stack) -> None:
    core = client.CoreV1Api(stack.cluster.api)
    selector = "app.kubernetes.io/name=qsys-operator"
    (op,) = core.list_namespaced_pod(stack.ns, label_selector=selector).items
    second = simulated_core("second", {"replicas": 1})
    client.CustomObjectsApi(stack.cluster.api).create_namespaced_custom_object(
        "qsys.dev", "v1alpha1", stack.ns, "qsyscores", second
    )
    core.delete_namespaced_pod(must(must(op.metadata).name), stack.ns, grace_period_seconds=0)
    wait_pods_ready(stack.cluster, stack.ns, selector, 1, timeout=TIMEOUT_S)
    wait_pods_ready(
        stack.cluster,
        stack.ns,
        "app.kubernetes.io/instance=second,app.kubernetes.io/name=qsys-gateway",
        1,
        timeout=TIMEOUT_S,
    )
    obj = wait_condition(stack.cluster, stack.ns, "QSysCore", "second", "Ready", "True", TIMEOUT_S)
    assert condition(obj, "Ready")["status"] == "True"
    client.CustomObjectsApi(stack.cluster.api).delete_namespaced_custom_object(
        "qsys.dev", "v1alpha1", stack.ns, "qsyscores", "second"
    )
