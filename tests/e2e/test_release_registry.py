"""A release as users get it: published to a real OCI registry (CNCF Distribution on
loopback, TLS from its own CA, htpasswd basic auth) by `make release` (hack/release.py),
as .github/workflows/release.yaml runs it, then checked and installed
from there only:

- each image is one index over linux/amd64 and linux/arm64; the arm64 image's
  interpreter and every compiled extension are aarch64 ELF files (read from the
  registry's layers), the amd64 one runs on the real node;
- the images, their platform manifests and the chart carry cosign signatures made
  with a key made here, verified before anything is installed; a stranger's key fails;
- each platform manifest carries a signed CycloneDX SBOM attestation that the
  CycloneDX schema validator accepts and that lists the Debian packages and wheels
  of that platform with their hashes;
- `helm install oci://…` (CA file, `helm registry login`), and the real node's
  containerd pulls the operator, gateway and simulator images from the registry,
  authenticated by an imagePullSecret, the gateway pods too (`gatewayPods` values),
  which also run under the PriorityClass the values name; without the secret the
  registry refuses the pull.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile
from kubernetes import client
from node_support import (
    create,
    real_namespace,
    require_real_node,
    simulated_core,
    tool,
    wait_pods_ready,
)
from operator_support import wait_condition

from qsys_testkit.checkout import REPO
from qsys_testkit.cluster import Cluster, must, wait_for
from qsys_testkit.registry import RegistryProcess

# node.sh makes the real node trust the test registry: local cluster only.
pytestmark = [
    pytest.mark.node_exclusive,
    pytest.mark.node_last,
    pytest.mark.e2e,
    pytest.mark.local_cluster,
    pytest.mark.timeout(1200),
    pytest.mark.usefixtures("real_node"),
    pytest.mark.tools("helm", "registry", "cosign"),
]

PATH = "qsys"
PULL_SECRET = "regcred"
CORE = "lobby"
TIMEOUT_S = 180
TRUSTED_ROOT_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
ARCH_MACHINE = {"amd64": "EM_X86_64", "arm64": "EM_AARCH64"}


@dataclass
class Published:
    registry: RegistryProcess
    env: dict[str, str]
    release: dict[str, Any]
    public_key: Path
    work: Path

    def offline(self) -> list[str | Path]:
        """cosign verification without the public Sigstore: no transparency log, and a
        trusted root without authorities, so that cosign never fetches Sigstore's TUF
        repository (the key alone is trusted)."""
        root = self.work / "trusted_root.json"
        if not root.exists():
            root.write_text(json.dumps({"mediaType": TRUSTED_ROOT_TYPE}))
        return ["--insecure-ignore-tlog", "--trusted-root", root]

    def image(self, name: str) -> dict[str, Any]:
        image: dict[str, Any] = self.release["images"][name]
        return image

    def repo(self, name: str) -> str:
        return f"{self.registry.address}/{PATH}/{name}"


def run(argv: list[str | Path], env: dict[str, str], check: bool = True) -> str:
    """stdout (with check) or stdout + stderr (without); the offline registry is the only
    server any of the tools may reach, so a word of Sigstore's public services in their
    output fails the test."""
    proc = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, **env},
    )
    assert "sigstore.dev" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
    if check:
        assert proc.returncode == 0, f"{argv[0]} {argv[1]} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout if check else proc.stdout + proc.stderr


def node_script(*args: str) -> None:
    subprocess.run(
        ["bash", str(REPO / "hack/cluster/node.sh"), *args],
        check=True,
        capture_output=True,
        timeout=30,
    )


@pytest.fixture(scope="module")
def published(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    """The registry (stopped afterwards, trusted by the real node meanwhile) and a
    release published to it with a cosign key made here."""
    require_real_node(cluster)
    work = tmp_path_factory.mktemp("release")
    with RegistryProcess(work / "registry") as registry:
        node_script("registry-trust", registry.address, str(registry.ca_file))
        try:
            env = {**registry.client_env(), "COSIGN_PASSWORD": uuid.uuid4().hex}
            keys = work / "keys"
            keys.mkdir()
            cosign = tool("cosign", "cosign")
            subprocess.run(
                [str(cosign), "generate-key-pair"],
                cwd=keys,
                check=True,
                capture_output=True,
                env={**os.environ, **env},
                timeout=60,
            )
            out = work / "release.json"
            # What `make release` and .github/workflows/release.yaml run, without
            # the transparency log (no network here).
            run(
                [
                    "make",
                    "-C",
                    REPO,
                    "release",
                    f"REGISTRY={registry.address}/{PATH}",
                    f"COSIGN_KEY={keys / 'cosign.key'}",
                    f"RELEASE_FLAGS=--no-tlog --out {out}",
                ],
                env,
            )
            release = json.loads(out.read_text("utf-8"))
            yield Published(registry, env, release, keys / "cosign.pub", work)
        finally:
            # The images pulled from it stay on the node: their layers are the imported
            # images', and removing a pulled reference with ctr, behind the CRI plugin's
            # back, made containerd 1.6's CRI image store forget the imported reference
            # of the same image too (ErrImageNeverPull in later tests).
            node_script("registry-untrust", registry.address)


def cosign(published: Published, *args: str | Path, check: bool = True) -> str:
    return run([tool("cosign", "cosign"), *args], published.env, check=check)


def first_json(out: str) -> Any:
    """cosign prints one JSON document per line (after an empty one)."""
    return json.loads(out.strip().splitlines()[0])


def crane(published: Published, *args: str | Path) -> str:
    return run([tool("cosign", "crane"), *args], published.env)


def test_images_are_multiarch_indexes(published: Published) -> None:
    assert set(published.release["images"]) == {"operator", "gateway", "core-sim"}
    for name, image in published.release["images"].items():
        assert image["ref"] == f"{published.repo(name)}:{published.release['version']}"
        index = json.loads(crane(published, "manifest", image["ref"]))
        assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
        platforms = {
            f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"]
            for m in index["manifests"]
        }
        assert platforms == image["platforms"]
        assert set(platforms) == {"linux/amd64", "linux/arm64"}
        digest = crane(published, "digest", image["ref"]).strip()
        assert digest == image["digest"]
        for platform, manifest in platforms.items():
            config = json.loads(crane(published, "config", f"{published.repo(name)}@{manifest}"))
            assert f"{config['os']}/{config['architecture']}" == platform
            assert config["config"]["User"] == "10001:10001"


def test_signatures_verify_with_the_release_key_only(published: Published) -> None:
    refs = [f"{published.repo(n)}@{i['digest']}" for n, i in published.release["images"].items()]
    refs += [
        f"{published.repo(n)}@{d}"
        for n, i in published.release["images"].items()
        for d in i["platforms"].values()
    ]
    chart = published.release["chart"]
    refs.append(f"{chart['ref'].removeprefix('oci://')}@{chart['digest']}")
    for ref in refs:
        out = cosign(published, "verify", "--key", published.public_key, *published.offline(), ref)
        claims = first_json(out)
        assert claims[0]["critical"]["image"]["docker-manifest-digest"] == ref.rsplit("@", 1)[1]
    # A key that did not sign: refused.
    stranger = published.work / "stranger"
    stranger.mkdir()
    subprocess.run(
        [str(tool("cosign", "cosign")), "generate-key-pair"],
        cwd=stranger,
        check=True,
        capture_output=True,
        env={**os.environ, **published.env},
        timeout=60,
    )
    out = cosign(
        published,
        "verify",
        "--key",
        stranger / "cosign.pub",
        *published.offline(),
        refs[0],
        check=False,
    )
    assert "no matching signatures" in out, out


def lock_hashes(arch: str) -> dict[str, str]:
    name = "requirements.txt" if arch == "amd64" else f"requirements-{arch}.txt"
    pins = {}
    for line in (REPO / "hack/images" / name).read_text("utf-8").splitlines():
        if "==" in line:
            req, _, sha = line.partition(" --hash=sha256:")
            pins[req.split("==")[0].lower()] = sha
    return pins


def test_each_platform_has_a_valid_signed_sbom(published: Published) -> None:
    # Imported here: jsonschema's import takes 1.2 s of every worker's collection.
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    validator = JsonStrictValidator(SchemaVersion.V1_6)
    for name, image in published.release["images"].items():
        for platform, manifest in image["platforms"].items():
            arch = platform.split("/")[1]
            out = cosign(
                published,
                "verify-attestation",
                "--key",
                published.public_key,
                *published.offline(),
                "--type",
                "cyclonedx",
                f"{published.repo(name)}@{manifest}",
            )
            envelope = first_json(out)
            statement = json.loads(base64.b64decode(envelope["payload"]))
            assert statement["predicateType"] == "https://cyclonedx.org/bom"
            assert statement["subject"][0]["digest"]["sha256"] == manifest.split(":")[1]
            sbom = statement["predicate"]
            error = validator.validate_str(json.dumps(sbom))
            assert error is None, f"{name} {platform}: {error}"
            components = {c["purl"]: c for c in sbom["components"]}
            debs = [c for p, c in components.items() if p.startswith("pkg:deb/")]
            wheels = [c for p, c in components.items() if p.startswith("pkg:pypi/")]
            assert len(debs) > 50
            assert all(f"arch={arch}" in c["purl"] or "arch=all" in c["purl"] for c in debs)
            assert any(c["name"] == "python3.11-minimal" and arch in c["purl"] for c in debs)
            assert all(len(c["hashes"][0]["content"]) == 64 for c in debs)
            pins = lock_hashes(arch)
            assert {c["name"].lower(): c["hashes"][0]["content"] for c in wheels} == pins


def layer_files(published: Published, ref: str) -> dict[str, bytes]:
    """Path -> content of the ELF candidates of the image REF (its layers applied in
    order, as crane export flattens them)."""
    flat = published.work / f"export-{uuid.uuid4().hex[:8]}.tar"
    try:
        with flat.open("wb") as out:
            subprocess.run(
                [str(tool("cosign", "crane")), "export", ref, "-"],
                stdout=out,
                stderr=subprocess.PIPE,
                check=True,
                timeout=300,
                env={**os.environ, **published.env},
            )
        files = {}
        with tarfile.open(flat) as tar:
            for member in tar:
                name = member.name.lstrip("./")
                wanted = name == "usr/bin/python3.11" or ".so" in name.rsplit("/", 1)[-1]
                if member.isfile() and wanted:
                    files[name] = must(tar.extractfile(member)).read()
        return files
    finally:
        flat.unlink(missing_ok=True)


@pytest.mark.parametrize("arch", ["arm64", "amd64"])
def test_platform_images_hold_only_their_architectures_binaries(
    published: Published, arch: str
) -> None:
    image = published.image("gateway")
    files = layer_files(
        published, f"{published.repo('gateway')}@{image['platforms'][f'linux/{arch}']}"
    )
    machines: dict[str, str] = {}
    for name, data in files.items():
        if data[:4] != b"\x7fELF":
            continue
        machines[name] = ELFFile(io.BytesIO(data)).header["e_machine"]
    assert machines["usr/bin/python3.11"] == ARCH_MACHINE[arch]
    extensions = [n for n in machines if "/site-packages/" in n or "/lib-dynload/" in n]
    site = [n for n in extensions if "/site-packages/" in n]
    assert len(site) >= 10, site
    assert any("pydantic_core" in n for n in site)
    assert any("lib-dynload/_ssl" in n for n in extensions)
    wrong = {n: m for n, m in machines.items() if m != ARCH_MACHINE[arch]}
    assert not wrong, f"{arch} image holds foreign binaries: {sorted(wrong)[:10]}"


def dockerconfig_secret(published: Published) -> client.V1Secret:
    auth = base64.b64encode(
        f"{published.registry.username}:{published.registry.password}".encode()
    ).decode()
    config = {"auths": {published.registry.address: {"auth": auth}}}
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=PULL_SECRET),
        type="kubernetes.io/dockerconfigjson",
        data={".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    )


def simulator(published: Published, ns: str, cluster: Cluster) -> None:
    labels = {"app": "core-sim"}
    container = {
        "name": "core-sim",
        "image": published.image("core-sim")["ref"],
        "command": ["qsys-core-sim", "--host", "0.0.0.0", "--port", "1710"],
        "ports": [{"containerPort": 1710, "name": "qrc"}],
        "readinessProbe": {"tcpSocket": {"port": 1710}, "periodSeconds": 1},
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    pod = {"imagePullSecrets": [{"name": PULL_SECRET}], "containers": [container]}
    create(
        cluster,
        ns,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "core-sim"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod},
            },
        },
    )
    service = {"selector": labels, "ports": [{"name": "qrc", "port": 1710, "targetPort": 1710}]}
    create(
        cluster,
        ns,
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "core-sim"}, "spec": service},
    )


def pulled_from_registry(pod: client.V1Pod, published: Published, name: str) -> None:
    (status,) = must(pod.status).container_statuses or []
    assert status.image_id == f"{published.repo(name)}@{published.image(name)['digest']}"


def test_helm_install_from_the_registry_pulls_every_image_with_a_pull_secret(
    published: Published, cluster: Cluster
) -> None:
    chart = published.release["chart"]
    chart_ref = chart["ref"].removeprefix("oci://")
    # Verify before installing: the chart and the images it deploys.
    for ref in (
        f"{chart_ref}:{chart['version']}",
        published.image("operator")["ref"],
        published.image("gateway")["ref"],
    ):
        cosign(published, "verify", "--key", published.public_key, *published.offline(), ref)
    helm = tool("helm", "helm")
    helm_env = {
        **published.env,
        "KUBECONFIG": cluster.kubeconfig,
        "HELM_REGISTRY_CONFIG": str(published.work / "helm-registry.json"),
    }
    login = subprocess.run(
        [
            str(helm),
            "registry",
            "login",
            published.registry.address,
            "--username",
            published.registry.username,
            "--password-stdin",
            "--ca-file",
            str(published.registry.ca_file),
        ],
        input=published.registry.password,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **helm_env},
        check=False,
    )
    assert login.returncode == 0, login.stderr
    scheduling = client.SchedulingV1Api(cluster.api)
    priority = f"qsys-e2e-{uuid.uuid4().hex[:8]}"
    scheduling.create_priority_class(
        client.V1PriorityClass(metadata=client.V1ObjectMeta(name=priority), value=1000)
    )
    core_api = client.CoreV1Api(cluster.api)
    with real_namespace(cluster) as ns:
        release = f"qsys-{ns.rsplit('-', 1)[1]}"
        try:
            core_api.create_namespaced_secret(ns, dockerconfig_secret(published))
            # Without the secret the registry refuses the pull.
            core_api.create_namespaced_pod(
                ns,
                client.V1Pod(
                    metadata=client.V1ObjectMeta(name="no-secret"),
                    spec=client.V1PodSpec(
                        containers=[
                            client.V1Container(
                                name="main", image=published.image("core-sim")["ref"]
                            )
                        ]
                    ),
                ),
            )

            def refused() -> str | None:
                pod = core_api.read_namespaced_pod("no-secret", ns)
                for status in must(pod.status).container_statuses or []:
                    waiting = status.state.waiting if status.state else None
                    if waiting and waiting.reason in ("ErrImagePull", "ImagePullBackOff"):
                        return str(waiting.message)
                return None

            message = wait_for("the unauthenticated pull refused", refused, timeout=60)
            assert "401" in message or "nauthorized" in message, message
            core_api.delete_namespaced_pod("no-secret", ns, grace_period_seconds=0)

            simulator(published, ns, cluster)
            values = [
                f"imagePullSecrets[0].name={PULL_SECRET}",
                f"gatewayPods.imagePullSecrets[0].name={PULL_SECRET}",
                f"gatewayPods.priorityClassName={priority}",
                f"watchNamespaces={{{ns}}}",
                "resyncSeconds=2",
                "serviceMonitor.enabled=false",
                "prometheusRule.enabled=false",
                "gatewayProbe.cidrs={198.18.0.0/16}",
            ]
            install: list[str | Path] = [helm, "install", release, chart["ref"]]
            install += ["--version", chart["version"]]
            install += ["--ca-file", published.registry.ca_file]
            install += ["--namespace", ns, "--wait", "--timeout", f"{TIMEOUT_S}s"]
            # The chart's CRDs (templates) exist already when other tests of the session
            # applied crds/: the release adopts them, as an upgrade from 0.1.0 does.
            install += ["--take-ownership"]
            for value in values:
                install += ["--set", value]
            run(install, helm_env)
            operator = wait_pods_ready(
                cluster, ns, "app.kubernetes.io/name=qsys-operator", 1, timeout=TIMEOUT_S
            )
            pulled_from_registry(operator[0], published, "operator")
            sim = wait_pods_ready(cluster, ns, "app=core-sim", 1, timeout=TIMEOUT_S)
            pulled_from_registry(sim[0], published, "core-sim")

            client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
                "qsys.dev", "v1alpha1", ns, "qsyscores", simulated_core(CORE)
            )
            wait_condition(cluster, ns, "QSysCore", CORE, "Ready", "True", timeout=TIMEOUT_S)
            selector = f"app.kubernetes.io/instance={CORE},app.kubernetes.io/name=qsys-gateway"
            gateways = wait_pods_ready(cluster, ns, selector, 2, timeout=TIMEOUT_S)
            for pod in gateways:
                spec = must(pod.spec)
                assert [s.name for s in spec.image_pull_secrets or []] == [PULL_SECRET]
                assert spec.priority_class_name == priority
                assert spec.priority == 1000
                pulled_from_registry(pod, published, "gateway")
        finally:
            subprocess.run(
                [str(helm), "uninstall", release, "--namespace", ns, "--wait", "--timeout", "60s"],
                capture_output=True,
                timeout=120,
                env={**os.environ, **helm_env},
                check=False,
            )
            scheduling.delete_priority_class(priority)
