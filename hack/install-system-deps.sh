#!/usr/bin/env bash
# System packages the tests and the demo need. Idempotent; needs root (or sudo) only
# when something is missing.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# redis-sentinel: tests/integration/test_ratelimit_sentinel.py fails a primary over under real sentinels.
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
# Lua 5.1: Argo CD runs health checks with gopher-lua (Lua 5.1 semantics);
# tests/unit/test_argocd_health.py runs docs/argocd/*.lua under it.
command -v lua5.1 >/dev/null 2>&1 || need+=(lua5.1)
# openssl: hack/cluster/pki.sh makes the control plane's certificates.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The local cluster's real node (hack/cluster/node.sh): container runtime, CNI
# plugins (/usr/lib/cni), and what kubelet, kube-proxy, kube-router and the
# teardown call (iptables, ipset, conntrack, nft).
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ipset >/dev/null 2>&1 || need+=(ipset)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
command -v nft >/dev/null 2>&1 || need+=(nftables)
# Node and npm: tests/js runs the vendor's QRWC SDK (@q-sys/qrwc) against the gateway;
# tests/mcp-inspector the MCP Inspector (make mcp-inspector).
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# Images without Docker (hack/images/build.sh, docs/images.md): a Debian root
# filesystem, OCI packing (also of the CoreDNS pod image, hack/cluster/node.sh),
# and a static C build of the pause image.
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v arch-test >/dev/null 2>&1 || need+=(arch-test)
command -v umoci >/dev/null 2>&1 || need+=(umoci)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
compgen -G "/usr/lib/*/libc.a" >/dev/null || need+=(libc6-dev) # gcc -static
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing system packages: ${need[*]}"
$sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
