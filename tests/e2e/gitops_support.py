"""Argo CD on the host against the test cluster, as the Prometheus Operator runs: the pinned
application controller and repo server (hack/tools/argocd) with a redis-server, all on
loopback; its CRDs from the same module; a git repository (smart HTTP through
`git http-backend`) served by a loopback HTTP server in this process; the chart in an OCI
registry (CNCF Distribution with TLS and basic auth, as the release test runs it), pushed
as `make release` packages it. Everything is stopped on the way out, whether the test
passed or not."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from node_support import create

from qsys_testkit import LOOPBACK, RedisProcess, free_port, stop_process, wait_for_port
from qsys_testkit.checkout import REPO, hack_script, pinned_tool, run_checked, tool_dir
from qsys_testkit.cluster import Cluster, wait_for, wait_gone
from qsys_testkit.registry import RegistryProcess

ARGOCD_TOOLS = REPO / "hack" / "tools" / "argocd"
ARGO_NS = "argocd"
ARGO_GROUP, ARGO_VERSION = "argoproj.io", "v1alpha1"
COMPONENTS = ("argocd-application-controller", "argocd-repo-server")
# The repository path `make release` publishes to in the test registry: the chart is
# oci://HOST:PORT/qsys/qsys-operator.
REGISTRY_PATH = "qsys"
# Argo CD's ConfigMap of repository server certificates, which its own manifests mount
# into the repo server (ARGOCD_TLS_DATA_PATH, /app/config/tls there).
TLS_CERTS_CM = "argocd-tls-certs-cm"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "qsys e2e",
    "GIT_AUTHOR_EMAIL": "e2e@qsys.invalid",
    "GIT_COMMITTER_NAME": "qsys e2e",
    "GIT_COMMITTER_EMAIL": "e2e@qsys.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def argocd_crds() -> list[Path]:
    """The Application and AppProject CRDs of the pinned Argo CD module."""
    out = run_checked(
        ["go", "list", "-m", "-f", "{{.Dir}}", "github.com/argoproj/argo-cd/v3"],
        cwd=ARGOCD_TOOLS,
        timeout=120,
    )
    crds = Path(out.strip()) / "manifests" / "crds"
    return [crds / "application-crd.yaml", crds / "appproject-crd.yaml"]


def kubectl(cluster: Cluster, *args: str, timeout: float = 120) -> str:
    return run_checked(
        [tool_dir("kube") / "kubectl", f"--kubeconfig={cluster.kubeconfig}", *args],
        timeout=timeout,
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    """/git/...: `git http-backend` as CGI (the smart HTTP protocol Argo CD's go-git
    needs)."""

    git_root: Path

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/git/"):
            self._git()
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        if self.path.startswith("/git/"):
            self._git()
        else:
            self.send_error(404)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while size := int(self.rfile.readline().strip() or b"0", 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _git(self) -> None:
        path, _, query = self.path.removeprefix("/git").partition("?")
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(self.git_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "REMOTE_ADDR": LOOPBACK,
        }
        result = subprocess.run(
            ["git", "http-backend"],
            input=self._body(),
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        out = result.stdout
        split = out.find(b"\r\n\r\n")
        head, body = (out[:split], out[split + 4 :]) if split >= 0 else out.split(b"\n\n", 1)
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Repos:
    """The git repository `sites`: a work tree that commits and pushes to the served bare
    repository."""

    work: Path
    git_url: str

    def git(self, *args: str) -> str:
        return run_checked(["git", "-C", self.work, *args], env={**os.environ, **GIT_ENV})

    def commit(self, files: dict[str, str], message: str) -> str:
        """Write files (path -> text; "" deletes), commit and push: the new revision."""
        for name, text in files.items():
            path = self.work / name
            if text:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, "utf-8")
            else:
                path.unlink(missing_ok=True)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        self.git("push", "-q", "origin", "HEAD:main")
        return self.git("rev-parse", "HEAD").strip()


@contextlib.contextmanager
def served_git(directory: Path) -> Iterator[Repos]:
    """The loopback HTTP server with a fresh git repository; shut down afterwards."""
    git_root = directory / "git"
    bare = git_root / "sites.git"
    run_checked(["git", "init", "-q", "--bare", "-b", "main", bare])
    work = directory / "sites"
    run_checked(["git", "init", "-q", "-b", "main", work])
    run_checked(["git", "-C", work, "remote", "add", "origin", bare])
    handler = type("Handler", (_Handler,), {"git_root": git_root})
    server = http.server.ThreadingHTTPServer((LOOPBACK, free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Repos(work, f"http://{LOOPBACK}:{server.server_address[1]}/git/sites.git")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@dataclass
class ChartRegistry:
    """The chart in an OCI registry: `url` (host:port/path, no scheme) is what Argo CD's
    repository Secret and the Applications' `repoURL` name, `chart` and `version` the
    rest of the reference oci://URL/CHART:VERSION."""

    registry: RegistryProcess
    url: str
    chart: str
    version: str

    @property
    def host(self) -> str:
        """The registry's host name without the port: argocd-tls-certs-cm's key."""
        return self.url.split("/", 1)[0].rsplit(":", 1)[0]


@contextlib.contextmanager
def published_chart(directory: Path) -> Iterator[ChartRegistry]:
    """A registry on loopback (TLS from its own CA, basic auth; named `localhost`, as a
    real registry is named, not by its address) holding the chart exactly as `make
    release` packages it (hack/release.py: version, appVersion, image repositories in
    the registry) and pushes it with helm; stopped afterwards."""
    release = hack_script("release")
    helm = tool_dir("helm") / "helm"
    with RegistryProcess(directory / "registry", host_name="localhost") as registry:
        url = f"{registry.address}/{REGISTRY_PATH}"
        version: str = release.chart_version()
        work = directory / "release"
        work.mkdir()
        package: Path = release.package_chart(url, version, work, helm)
        env = {
            **os.environ,
            **registry.client_env(),
            "HOME": str(directory),
            "HELM_CACHE_HOME": str(directory / "helm"),
        }
        run_checked([helm, "push", package, f"oci://{url}"], env=env)
        yield ChartRegistry(registry, url, release.CHART.name, version)


@dataclass
class ArgoCD:
    cluster: Cluster
    logs: Path

    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.cluster.api)

    def app(self, name: str) -> dict[str, Any]:
        return cast(
            dict[str, Any],
            self.custom().get_namespaced_custom_object(
                ARGO_GROUP, ARGO_VERSION, ARGO_NS, "applications", name
            ),
        )

    def apply(self, body: dict[str, Any]) -> None:
        plural = {"Application": "applications", "AppProject": "appprojects"}[body["kind"]]
        self.custom().create_namespaced_custom_object(
            ARGO_GROUP, ARGO_VERSION, ARGO_NS, plural, body
        )

    def refresh(self, name: str, kind: str = "hard") -> None:
        """Ask for a refresh now, as `argocd app get --refresh` (`--hard-refresh`: the repo
        server's caches bypassed) does, instead of waiting for the next resync."""
        body = {"metadata": {"annotations": {"argocd.argoproj.io/refresh": kind}}}
        self.custom().patch_namespaced_custom_object(
            ARGO_GROUP, ARGO_VERSION, ARGO_NS, "applications", name, body
        )

    def resource(self, app: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
        for res in (app.get("status") or {}).get("resources") or []:
            if res.get("kind") == kind and res.get("name") == name:
                return dict(res)
        return {}

    def log(self, component: str) -> str:
        """All that COMPONENT (argocd-repo-server, ...) logged so far."""
        return (self.logs / f"{component}.log").read_text("utf-8", errors="replace")

    def log_tail(self) -> str:
        return "".join(
            f"--- {p.name}\n{p.read_text('utf-8', errors='replace')[-4000:]}\n"
            for p in sorted(self.logs.glob("*.log"))
        )

    def delete_apps(self, names: list[str], timeout: float = 180) -> None:
        """Delete the Applications one after the other; their finalizer lets the running
        controller delete what they created first."""
        for name in names:
            with contextlib.suppress(ApiException):
                self.custom().delete_namespaced_custom_object(
                    ARGO_GROUP, ARGO_VERSION, ARGO_NS, "applications", name
                )

            wait_gone(f"Application {name}", functools.partial(self.app, name), timeout)


def _established(ext: client.ApiextensionsV1Api, name: str) -> bool:
    status = ext.read_custom_resource_definition(name).status
    conditions = (status and status.conditions) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def _set_up_namespace(cluster: Cluster, configmap: dict[str, str]) -> None:
    core = client.CoreV1Api(cluster.api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ARGO_NS)))
    labels = {"app.kubernetes.io/part-of": "argocd"}
    core.create_namespaced_config_map(
        ARGO_NS,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="argocd-cm", labels=labels), data=configmap
        ),
    )
    # The settings are incomplete without a signing key (only the API server signs with it).
    core.create_namespaced_secret(
        ARGO_NS,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="argocd-secret", labels=labels),
            string_data={"server.secretkey": secrets.token_urlsafe(32)},
        ),
    )


def _mount_configmap(cluster: Cluster, name: str, directory: Path) -> None:
    """Each key of the ConfigMap NAME (as the API server holds it) as a file in directory,
    as the kubelet mounts it into Argo CD's pods; nothing if there is no such ConfigMap."""
    try:
        data = client.CoreV1Api(cluster.api).read_namespaced_config_map(name, ARGO_NS).data
    except ApiException as exc:
        if exc.status == 404:
            return
        raise
    for key, value in (data or {}).items():
        (directory / key).write_text(value, "utf-8")


def _remove_namespace(cluster: Cluster) -> None:
    """With the controller gone, an Application still there keeps its finalizer forever:
    drop it (what it created goes with the test's namespace)."""
    custom = client.CustomObjectsApi(cluster.api)
    with contextlib.suppress(ApiException):
        apps = cast(
            dict[str, Any],
            custom.list_namespaced_custom_object(ARGO_GROUP, ARGO_VERSION, ARGO_NS, "applications"),
        )
        for app in apps["items"]:
            custom.patch_namespaced_custom_object(
                ARGO_GROUP,
                ARGO_VERSION,
                ARGO_NS,
                "applications",
                app["metadata"]["name"],
                {"metadata": {"finalizers": None}},
            )
    core = client.CoreV1Api(cluster.api)
    with contextlib.suppress(ApiException):
        core.delete_namespace(ARGO_NS)
        core.delete_collection_namespaced_pod(ARGO_NS, grace_period_seconds=1)
    wait_gone(f"namespace {ARGO_NS}", lambda: core.read_namespace(ARGO_NS), timeout=120)


@contextlib.contextmanager
def argocd(
    cluster: Cluster,
    directory: Path,
    configmap: dict[str, str],
    settings: Sequence[dict[str, Any]] = (),
) -> Iterator[ArgoCD]:
    """The namespace `argocd` with argocd-cm holding configmap and the Secrets and
    ConfigMaps of settings (argocd-tls-certs-cm mounted into the repo server's TLS
    directory), the Argo CD CRDs, redis, the repo server and the application controller.
    Afterwards the processes are stopped and the namespace is deleted (the CRDs stay, as
    Argo CD's own install leaves them)."""
    binary = pinned_tool("argocd", "argocd")
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True)
    for name in COMPONENTS:
        (bin_dir / name).symlink_to(binary)
    logs = directory / "logs"
    logs.mkdir()
    home = directory / "home"
    for sub in ("tmp", "ssh", "tls", "gnupg"):
        (home / sub).mkdir(parents=True)
    files = [arg for p in argocd_crds() for arg in ("-f", str(p))]
    kubectl(cluster, "apply", "--server-side", *files)
    # Not `kubectl wait --for=condition=Established`: it fails at once ("accessor error")
    # on a CRD whose status has no conditions yet.
    ext = client.ApiextensionsV1Api(cluster.api)
    for crd in ("applications.argoproj.io", "appprojects.argoproj.io"):
        wait_for(f"CRD {crd} Established", functools.partial(_established, ext, crd), 60)
    env = {
        "PATH": os.pathsep.join([str(tool_dir("helm")), os.environ["PATH"]]),
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "KUBECONFIG": cluster.kubeconfig,
        # The in-cluster destination (https://kubernetes.default.svc) is the kubeconfig's
        # cluster, as for a controller run outside the cluster in Argo CD's own e2e tests.
        "ARGOCD_FAKE_IN_CLUSTER": "true",
        "ARGOCD_GPG_ENABLED": "false",
        "ARGOCD_SSH_DATA_PATH": str(home / "ssh"),
        "ARGOCD_TLS_DATA_PATH": str(home / "tls"),
        "GNUPGHOME": str(home / "gnupg"),
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _set_up_namespace(cluster, configmap)
        for body in settings:
            create(cluster, ARGO_NS, body)
        _mount_configmap(cluster, TLS_CERTS_CM, home / "tls")
        with RedisProcess() as redis:
            redis_addr = f"{LOOPBACK}:{redis.port}"
            repo_port = free_port()
            repo_argv = [
                str(bin_dir / "argocd-repo-server"),
                *("--address", LOOPBACK, "--port", str(repo_port)),
                *("--metrics-address", LOOPBACK, "--metrics-port", str(free_port())),
                *("--disable-tls", "--redis", redis_addr, "--loglevel", "info"),
            ]
            controller_argv = [
                str(bin_dir / "argocd-application-controller"),
                *("--kubeconfig", cluster.kubeconfig, "--namespace", ARGO_NS),
                *("--repo-server", f"{LOOPBACK}:{repo_port}", "--repo-server-plaintext"),
                *("--redis", redis_addr, "--metrics-port", str(free_port())),
                # A full comparison every 10 s instead of every 3 min (the drift test's
                # window would otherwise hold at most one); watches trigger one at once
                # whenever a live object changes anyway.
                *("--app-resync", "10", "--app-resync-jitter", "0"),
                "--persist-resource-health",
                *("--status-processors", "4", "--operation-processors", "2"),
                *("--loglevel", "info"),
            ]
            for argv in (repo_argv, controller_argv):
                name = Path(argv[0]).name
                with (logs / f"{name}.log").open("ab") as out:
                    procs.append(
                        subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
                    )
                if name == "argocd-repo-server":
                    wait_for_port(repo_port, timeout=60)
            try:
                yield ArgoCD(cluster, logs)
            finally:
                for proc in reversed(procs):
                    stop_process(proc, 20)
    finally:
        for proc in procs:
            stop_process(proc, 20)
        _remove_namespace(cluster)
        shutil.rmtree(home, ignore_errors=True)
