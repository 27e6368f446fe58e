"""Builds the kind node image from what this project already builds (docs/testing.md, "kind").

    python hack/kind_node.py build   build what is missing; prints the node tarball
    python hack/kind_node.py path    the node tarball (built or not)
    python hack/kind_node.py name    the image name `docker import` gives it
    python hack/kind_node.py routes  the host's routes into the cluster, from
                                     `kubectl get nodes -o json` on stdin ("CIDR VIA" lines)

No registry and no Docker at build time: a Debian root filesystem (mmdebstrap), the
files of kind's own base image (the pinned kind module's images/base/files), Debian's
containerd and runc, the pinned kubelet, kubeadm and kubectl, and the control plane's
images (kube-apiserver, kube-controller-manager, kube-scheduler, etcd, CoreDNS,
kube-proxy, pause) as OCI tarballs in /kind/images, which the node imports into its
containerd before the kubelet starts. The output is one root filesystem tarball for
`docker import` (hack/kind/docker.sh). Steps are cached in $QSYS_TOOLS_CACHE/images
like hack/images.py's, whose helpers this uses.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hack import images as img

SUITE = img.SUITE
NODE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "ipset",
    "nftables",
    "conntrack",
    "iproute2",
    "ethtool",
    "socat",
    "kmod",
    "util-linux",
    "mount",
    "procps",
    "ca-certificates",
    "jq",
)
CNI_PLUGINS = ("ptp", "host-local", "loopback", "portmap", "bridge")
# The groups whose binaries go into the node and its images (hack/tools).
NODE_BINARIES = {"kubelet": "node", "kubeadm": "kubeadm", "kubectl": "kube"}
STATIC_IMAGES = {
    "kube-apiserver": "kube",
    "kube-controller-manager": "kube",
    "kube-scheduler": "kube",
    "etcd": "kube",
    "kube-proxy": "node",
    "coredns": "coredns",
}
# The node network's DaemonSet (NETWORK_MANIFEST) runs these from its own image.
NETWORK_BINARIES = {"kubectl": "kube", "kube-router": "kube-router"}
NETWORK_IMAGE = "qsys.local/kind-network"
# kind-config.yaml's serviceSubnet (a unit test holds them equal): kube-router's firewall
# lets pods reach Services, whatever the policy, as on the local cluster's real node.
SERVICE_SUBNET = "198.19.0.0/17"
IMPORT_UNIT = """\
[Unit]
Description=Import the node's images (/kind/images) into containerd
After=containerd.service
Requires=containerd.service
Before=kubelet.service
ConditionPathExists=!/var/lib/qsys-images-imported

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -euc 'for f in /kind/images/*.tar; do ctr -n k8s.io images import \
--label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests "$f"; done; \
touch /var/lib/qsys-images-imported'

[Install]
WantedBy=multi-user.target
"""
KUBELET_AFTER_IMPORT = "[Unit]\nWants=qsys-images.service\nAfter=qsys-images.service\n"
# The node's containerd: kind's config with the sandbox image of the pinned release and
# restrict_oom_score_adj (runc cannot set -998 without CAP_SYS_RESOURCE, which the host's
# bounding set lacks).
CONTAINERD_CONFIG = """\
version = 2

[plugins."io.containerd.grpc.v1.cri".containerd]
  discard_unpacked_layers = false
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  base_runtime_spec = "/etc/containerd/cri-base.json"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = true

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  tolerate_missing_hugepages_controller = true
  restrict_oom_score_adj = true
"""
# kind applies /kind/manifests/default-cni.yaml (templated with the pod subnet, and given
# the control plane's address as CONTROL_PLANE_ENDPOINT in the first container): the
# node network of this image instead of kindnetd. On each node, `cni` writes a ptp
# conflist for the node's podCIDR and routes every other node's podCIDR to that node;
# `firewall` is kube-router enforcing NetworkPolicy (as on the local cluster's real node),
# talking to the apiserver at the address `cni` hands it in a shared directory (kind
# gives CONTROL_PLANE_ENDPOINT to the first container only).
NETWORK_SCRIPT = r"""set -eu
if [ -n "${CONTROL_PLANE_ENDPOINT:-}" ]; then
  export KUBERNETES_SERVICE_HOST="${CONTROL_PLANE_ENDPOINT%:*}"
  export KUBERNETES_SERVICE_PORT="${CONTROL_PLANE_ENDPOINT##*:}"
fi
# The firewall container waits for this: the apiserver itself, not its ClusterIP,
# which works only once kube-proxy has programmed it.
printf 'export KUBERNETES_SERVICE_HOST=%s KUBERNETES_SERVICE_PORT=%s\n' \
  "$KUBERNETES_SERVICE_HOST" "$KUBERNETES_SERVICE_PORT" >/run/qsys-kind-network/apiserver
conf=/etc/cni/net.d/10-qsys-ptp.conflist
# The host (the kind network's gateway: this machine) counts as the node, as on the local
# cluster where the host is the node: its packets carry kube-router's "admitted by a
# policy" mark, so a NetworkPolicy never stops the host's calls to pods and ClusterIPs.
# Pods get no such mark: the policies between them are kube-router's alone.
host=$(ip -4 route show default | awk '{print $3; exit}')
mark="-s $host -m comment --comment qsys-kind-host -j MARK --set-xmark 0x10000/0x10000"
query='{range .items[*]}{.metadata.name} {.spec.podCIDR} '
query="$query"'{.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}'
while :; do
  # shellcheck disable=SC2086
  iptables -w -t mangle -C PREROUTING $mark 2>/dev/null || iptables -w -t mangle -A PREROUTING $mark
  if kubectl get nodes -o jsonpath="$query" >/tmp/nodes; then
    while read -r name cidr ip; do
      [ -n "$cidr" ] || continue
      if [ "$name" = "$NODE_NAME" ]; then
        want=$(sed "s|POD_CIDR|$cidr|" /etc/qsys-kind-network/conflist.json)
        if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
          printf '%s\n' "$want" >"$conf.tmp" && mv "$conf.tmp" "$conf"
          echo "cni: $conf for $cidr"
        fi
      else
        ip route replace "$cidr" via "$ip"
      fi
    done </tmp/nodes
  fi
  sleep 5
done
"""
# The node's pods: ptp (a veth per pod, routed), no masquerading (nothing leaves the
# 198.18.0.0/15 ranges), as kindnetd writes it.
CONFLIST = {
    "cniVersion": "0.4.0",
    "name": "kind",
    "plugins": [
        {
            "type": "ptp",
            "ipMasq": False,
            "mtu": 1500,
            "ipam": {
                "type": "host-local",
                "dataDir": "/run/cni-ipam-state",
                "routes": [{"dst": "0.0.0.0/0"}],
                "ranges": [[{"subnet": "POD_CIDR"}]],
            },
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}
NETWORK_MANIFEST = """\
# qsys-operator kind node network (hack/kind_node.py)
# would you kindly patch this file
---
kind: ClusterRole
apiVersion: rbac.authorization.k8s.io/v1
metadata:
  name: qsys-kind-network
rules:
# kube-router's firewall starts only once its informers have synced, Services and
# their endpoints included (it lists them even with the service proxy off).
- apiGroups: [""]
  resources: [nodes, pods, namespaces, services, endpoints]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
---
kind: ClusterRoleBinding
apiVersion: rbac.authorization.k8s.io/v1
metadata:
  name: qsys-kind-network
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: qsys-kind-network
subjects:
- kind: ServiceAccount
  name: qsys-kind-network
  namespace: kube-system
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: qsys-kind-network
  namespace: kube-system
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: qsys-kind-network
  namespace: kube-system
data:
  cni.sh: |
{script}
  conflist.json: |
{conflist}
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: qsys-kind-network
  namespace: kube-system
  labels:
    k8s-app: qsys-kind-network
spec:
  selector:
    matchLabels:
      k8s-app: qsys-kind-network
  template:
    metadata:
      labels:
        k8s-app: qsys-kind-network
    spec:
      hostNetwork: true
      dnsPolicy: Default
      tolerations:
      - operator: Exists
      priorityClassName: system-node-critical
      serviceAccountName: qsys-kind-network
      containers:
      - name: cni
        image: {image}
        imagePullPolicy: Never
        command: [/bin/sh, /etc/qsys-kind-network/cni.sh]
        env:
        - name: NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
        securityContext:
          privileged: false
          capabilities:
            add: [NET_ADMIN, NET_RAW]
        volumeMounts:
        - name: cni-cfg
          mountPath: /etc/cni/net.d
        - name: script
          mountPath: /etc/qsys-kind-network
        - name: shared
          mountPath: /run/qsys-kind-network
      - name: firewall
        image: {image}
        imagePullPolicy: Never
        command:
        - /bin/sh
        - -c
        - |
          until [ -s /run/qsys-kind-network/apiserver ]; do sleep 1; done
          . /run/qsys-kind-network/apiserver
          exec /usr/local/bin/kube-router "$@"
        - kube-router
        - --run-firewall=true
        - --run-router=false
        - --run-service-proxy=false
        - --service-cluster-ip-range={service_subnet}
        - --health-port=0
        - --metrics-port=0
        - --hostname-override=$(NODE_NAME)
        env:
        - name: NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
        securityContext:
          privileged: true
        volumeMounts:
        - name: xtables-lock
          mountPath: /run/xtables.lock
        - name: lib-modules
          mountPath: /lib/modules
          readOnly: true
        - name: shared
          mountPath: /run/qsys-kind-network
          readOnly: true
      volumes:
      - name: shared
        emptyDir: {{}}
      - name: cni-cfg
        hostPath:
          path: /etc/cni/net.d
          type: DirectoryOrCreate
      - name: script
        configMap:
          name: qsys-kind-network
      - name: xtables-lock
        hostPath:
          path: /run/xtables.lock
          type: FileOrCreate
      - name: lib-modules
        hostPath:
          path: /lib/modules
"""
DEFAULT_STORAGE = """\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
"""


def tool_bin(group: str) -> Path:
    out = subprocess.run(
        ["bash", str(img.REPO / "hack/tools/build.sh"), "--dir", group],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return Path(out)


def kind_base_files() -> Path:
    """images/base/files of the pinned kind module (downloaded if needed)."""
    out = img.run(
        ["go", "mod", "download", "-json", f"sigs.k8s.io/kind@{kind_version()}"],
        cwd=str(img.REPO / "hack/tools/kind"),
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )
    return Path(json.loads(out)["Dir"]) / "images/base/files"


def kind_version() -> str:
    env = (img.REPO / "hack/tools/kind/build.env").read_text("utf-8")
    return env.split("VERSION=", 1)[1].split()[0]


def control_plane_images() -> dict[str, str]:
    """Image name (kube-apiserver, coredns, ...) -> the reference the pinned kubeadm expects."""
    kubeadm = tool_bin("kubeadm") / "kubeadm"
    out = img.run([str(kubeadm), "config", "images", "list", "--kubernetes-version", version()])
    refs = {}
    for ref in out.split():
        name = ref.rsplit("/", 1)[1].split(":")[0]
        refs[name] = ref
    return refs


def version() -> str:
    return str(img.kube_version())


def rootfs_argv(target: Path) -> list[str]:
    return [
        "mmdebstrap",
        "--quiet",
        "--mode=root",
        "--variant=minbase",
        f"--include={','.join(NODE_PACKAGES)}",
        *(f"--dpkgopt={opt}" for opt in img.DPKG_EXCLUDES),
        SUITE,
        str(target),
        *img.debian_mirrors(),
    ]


def build_rootfs(work: Path, out: Path) -> None:
    root = work / "root"
    img.run(rootfs_argv(root))
    for path in ("var/cache/apt", "var/lib/apt/lists", "var/log"):
        for child in (root / path).glob("*"):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    for name in ("etc/resolv.conf", "etc/hostname", "etc/machine-id"):
        (root / name).unlink(missing_ok=True)
        (root / name).touch()
    img.pack(root, out, root_owned=False)


def bin_groups() -> dict[str, str]:
    """Binary -> tool group of the images' binary layer."""
    return {**STATIC_IMAGES, **NETWORK_BINARIES}


def build_bins(work: Path, out: Path) -> None:
    layer = work / "layer"
    (layer / "usr/local/bin").mkdir(parents=True)
    for name, group in bin_groups().items():
        shutil.copy2(tool_bin(group) / name, layer / "usr/local/bin" / name)
    img.pack(layer, out, root_owned=True)


def image_configs(refs: dict[str, str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """umoci config arguments and reference of each control-plane image (all over the
    same two layers: the node's Debian root filesystem, for kube-proxy's iptables, and
    the static binaries; kubeadm's manifests name each command)."""
    configs = {}
    for name in STATIC_IMAGES:
        configs[name] = [
            f"--config.entrypoint=/usr/local/bin/{name}",
            "--config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ]
    configs["kind-network"] = [
        "--config.entrypoint=/bin/sh",
        "--config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]
    names = {name: refs[name] for name in STATIC_IMAGES}
    return configs, {**names, "kind-network": network_image()}


def network_image() -> str:
    return f"{NETWORK_IMAGE}:{version()}"


def write_node_files(root: Path, base: Path, refs: dict[str, str]) -> None:
    # As kind's Dockerfile copies them: scripts 0755, everything else 0644 (the module
    # cache's files are read-only).
    for src in sorted(p for p in base.rglob("*") if p.is_file()):
        rel = src.relative_to(base)
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        executable = rel.parts[:3] == ("usr", "local", "bin") or rel.parts[:2] == ("kind", "bin")
        dest.chmod(0o755 if executable else 0o644)
    for name, group in NODE_BINARIES.items():
        shutil.copy2(tool_bin(group) / name, root / "usr/bin" / name)
    # kind's units start containerd from /usr/local/bin; Debian's lives in /usr/bin.
    for name in ("containerd", "ctr", "containerd-shim-runc-v2"):
        link = root / "usr/local/bin" / name
        link.unlink(missing_ok=True)
        link.symlink_to(f"/usr/bin/{name}")
    cni = root / "opt/cni/bin"
    cni.mkdir(parents=True, exist_ok=True)
    for plugin in CNI_PLUGINS:
        shutil.copy2(root / "usr/lib/cni" / plugin, cni / plugin)
    etc = root / "etc"
    (etc / "containerd/config.toml").write_text(CONTAINERD_CONFIG.format(pause=refs["pause"]))
    spec = json.loads(img.run(["ctr", "oci", "spec"]))
    spec["hooks"] = {"createContainer": [{"path": "/kind/bin/mount-product-files.sh"}]}
    spec["process"].pop("rlimits", None)
    (etc / "containerd/cri-base.json").write_text(json.dumps(spec, indent=2) + "\n")
    (etc / "systemd/system/qsys-images.service").write_text(IMPORT_UNIT)
    dropin = etc / "systemd/system/kubelet.service.d/20-qsys-images.conf"
    dropin.write_text(KUBELET_AFTER_IMPORT)
    (etc / "kubernetes/manifests").mkdir(parents=True, exist_ok=True)
    journald = etc / "systemd/journald.conf"
    journald.write_text(journald.read_text("utf-8") + "ReadKMsg=no\n")
    # As kind's base image: no units but ours, init is systemd.
    sysinit = root / "usr/lib/systemd/system/sysinit.target.wants"
    (sysinit / "systemd-tmpfiles-setup.service").unlink(missing_ok=True)
    for wants in (
        *root.glob("usr/lib/systemd/system/multi-user.target.wants/*"),
        *root.glob("etc/systemd/system/*.wants/*"),
        *root.glob("usr/lib/systemd/system/local-fs.target.wants/*"),
        *root.glob("usr/lib/systemd/system/sockets.target.wants/*udev*"),
        *root.glob("usr/lib/systemd/system/sockets.target.wants/*initctl*"),
        *root.glob("usr/lib/systemd/system/basic.target.wants/*"),
    ):
        wants.unlink()
    units = ("kubelet.service", "containerd.service", "undo-mount-hacks.service")
    img.run(["systemctl", f"--root={root}", "enable", *units, "qsys-images.service"])
    img.run(["systemctl", f"--root={root}", "mask", "systemd-binfmt.service"])
    (root / "kind/version").write_text(version() + "\n")
    manifests = root / "kind/manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / "default-storage.yaml").write_text(DEFAULT_STORAGE)
    network = NETWORK_MANIFEST.format(
        script=textwrap.indent(NETWORK_SCRIPT, "    "),
        conflist=textwrap.indent(json.dumps(CONFLIST, indent=2), "    "),
        image=network_image(),
        service_subnet=SERVICE_SUBNET,
    )
    (manifests / "default-cni.yaml").write_text(network)


def build_node(
    rootfs: Path, control_plane: Path, pause: Path, refs: dict[str, str], work: Path, out: Path
) -> None:
    root = work / "root"
    root.mkdir()
    img.run(["tar", "--extract", f"--file={rootfs}", f"--directory={root}", "--numeric-owner"])
    write_node_files(root, kind_base_files(), refs)
    (root / "kind/images").mkdir(parents=True)
    shutil.copy2(control_plane, root / "kind/images/control-plane.tar")
    shutil.copy2(pause, root / "kind/images/pause.tar")
    img.pack(root, out, root_owned=False)


def steps() -> tuple[img.Step, img.Step, img.Step, img.Step, dict[str, str]]:
    rootfs = img.Step(
        "kind-rootfs",
        img.digest(
            img.apt_sources(),
            img.code(rootfs_argv, build_rootfs, img.pack, img.debian_mirrors),
            json.dumps([SUITE, NODE_PACKAGES, img.DPKG_EXCLUDES, img.EPOCH]),
        ),
        "layer.tar",
    )
    bins = img.Step(
        "kind-bins",
        img.digest(
            json.dumps({n: str(tool_bin(g)) for n, g in bin_groups().items()}),
            img.code(build_bins, img.pack),
        ),
        "layer.tar",
    )
    refs = control_plane_images()
    configs, names = image_configs(refs)
    control_plane = img.Step(
        "kind-images",
        img.digest(
            rootfs.key,
            bins.key,
            json.dumps([configs, names]),
            img.code(img.oci_archive, img.oci_layout),
        ),
        "images.tar",
    )
    pause = img.pause_step(img.pause_layer_step())
    node = img.Step(
        "kind-node",
        img.digest(
            rootfs.key,
            control_plane.key,
            pause.key,
            json.dumps({n: str(tool_bin(g)) for n, g in NODE_BINARIES.items()}),
            kind_version(),
            json.dumps(refs),
            img.run(["dpkg-query", "-W", "-f=${Version}", "containerd"]),
            img.code(write_node_files, build_node),
            IMPORT_UNIT,
            KUBELET_AFTER_IMPORT,
            CONTAINERD_CONFIG,
            DEFAULT_STORAGE,
            NETWORK_SCRIPT,
            NETWORK_MANIFEST,
            SERVICE_SUBNET,
            json.dumps(CONFLIST),
        ),
        "node.tar",
    )
    return rootfs, bins, control_plane, node, refs


def image_name(node: img.Step) -> str:
    return f"qsys.local/kind-node:{version()}-{node.key}"


def build() -> Path:
    img.require_root()
    groups = sorted({*NODE_BINARIES.values(), *STATIC_IMAGES.values(), *NETWORK_BINARIES.values()})
    if os.environ.get("QSYS_TOOLS_STATUS"):
        # Under `make test` (its side run prepares the kind smoke test) the background
        # build builds these: wait for them rather than build them a second time beside
        # it. Imported here: the other commands run with any python3 (hack/kind/cluster.sh).
        from qsys_testkit.checkout import wait_for_tools

        why = wait_for_tools(groups)
        if why:
            sys.exit(f"kind_node.py build: {why}")
    subprocess.run(["bash", str(img.REPO / "hack/tools/build.sh"), *groups], check=True)
    rootfs, bins, control_plane, node, refs = steps()
    img.ensure(rootfs, build_rootfs)
    img.ensure(bins, build_bins)
    configs, names = image_configs(refs)
    img.ensure(
        control_plane,
        lambda _work, out: img.oci_archive([rootfs.path, bins.path], configs, names, out),
    )
    pause = img.build_pause_image()
    path: Path = img.ensure(
        node, lambda work, out: build_node(rootfs.path, control_plane.path, pause, refs, work, out)
    )
    return path


# Every address the host may route to (the project's network rules).
ALLOWED_NETWORK = ipaddress.IPv4Network("198.18.0.0/15")
# Where real pods run (qsys_testkit.kube.REAL_NODE_LABEL; kind-config.yaml labels the worker).
REAL_NODE_LABEL = ("qsys.io/node", "real")


def host_routes(nodes: dict[str, Any], service_subnet: str = SERVICE_SUBNET) -> list[str]:
    """The host's routes into the cluster ("CIDR VIA"), from a NodeList: each node's podCIDR
    via that node, and the Service range via the node where real pods run (its kube-proxy
    translates a ClusterIP and masquerades the host's address), else via the first node.
    Tests call pods and ClusterIPs from the host, as on the local cluster's real node."""
    items = sorted(nodes["items"], key=lambda n: str(n["metadata"]["name"]))
    if not items:
        raise ValueError("the cluster has no nodes")
    vias = {}
    routes = []
    for node in items:
        name = node["metadata"]["name"]
        internal = [
            a["address"] for a in node["status"].get("addresses", []) if a["type"] == "InternalIP"
        ]
        cidr = node["spec"].get("podCIDR")
        if not internal or not cidr:
            raise ValueError(f"node {name} has no InternalIP or no podCIDR yet")
        vias[name] = internal[0]
        routes.append((cidr, internal[0]))
    key, value = REAL_NODE_LABEL
    real = [n for n in items if n["metadata"].get("labels", {}).get(key) == value]
    routes.append((service_subnet, vias[(real or items)[0]["metadata"]["name"]]))
    for cidr, via in routes:
        if not ipaddress.IPv4Network(cidr).subnet_of(ALLOWED_NETWORK):
            raise ValueError(f"{cidr} lies outside {ALLOWED_NETWORK}")
        if ipaddress.IPv4Address(via) not in ALLOWED_NETWORK:
            raise ValueError(f"{via} lies outside {ALLOWED_NETWORK}")
    return [f"{cidr} {via}" for cidr, via in routes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("build", "path", "name", "routes"))
    args = parser.parse_args()
    if args.command == "build":
        print(build())
        return
    if args.command == "routes":
        try:
            print("\n".join(host_routes(json.load(sys.stdin))))
        except ValueError as exc:
            sys.exit(f"kind_node.py routes: {exc}")
        return
    node = steps()[3]
    print(node.path if args.command == "path" else image_name(node))


if __name__ == "__main__":
    main()
