# shellcheck shell=bash disable=SC2034 # variables used by the scripts sourcing this
# Shared settings of the local control plane (sourced by up.sh and down.sh).
# Every port is on 127.0.0.1 and can be overridden from the environment.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# QSYS_CLUSTER_PLANE: which control plane of this checkout. `main` (the default) is the
# one with the real node, and takes the QSYS_CLUSTER_DIR, QSYS_*_PORT and QSYS_POD_CIDR
# overrides. Beside it run planes on kwok's fake nodes only, never with the real node,
# each with its own state directory, loopback ports (main's + OFFSET) and kwok pod range,
# none of them overridable (so that a setting meant for main cannot make two planes
# collide): `kwok` for the e2e tests that never use the real node (beside the real-node
# tests, `make test`), `floor` for the oldest supported Kubernetes minor (`make e2e-floor`).
PLANE=${QSYS_CLUSTER_PLANE:-main}
case $PLANE in
main) ;;
floor) plane_offset=100 plane_pods=127.78.0.1/16 ;;
kwok) plane_offset=200 plane_pods=127.79.0.1/16 ;;
*)
	echo "cluster: ERROR: QSYS_CLUSTER_PLANE=$PLANE: use main, kwok or floor" >&2
	exit 1
	;;
esac
if [[ $PLANE != main ]]; then
	# shellcheck disable=SC2046 # the names are single words
	unset QSYS_CLUSTER_DIR QSYS_POD_CIDR QSYS_REAL_NODE $(compgen -v QSYS_ | grep '_PORT$')
	QSYS_CLUSTER_DIR=$REPO/.cache/cluster-$PLANE QSYS_POD_CIDR=$plane_pods QSYS_REAL_NODE=0
	for port in ETCD:12379 ETCD_PEER:12380 APISERVER:16443 CONTROLLER_MANAGER:16444 \
		SCHEDULER:16445 KWOK:16446 KUBELET:16447 KUBELET_HEALTHZ:16448 \
		KUBE_PROXY_HEALTHZ:16449 KUBE_PROXY_METRICS:16450; do
		declare "QSYS_${port%%:*}_PORT=$((${port#*:} + plane_offset))"
	done
	unset port
fi

STATE=${QSYS_CLUSTER_DIR:-$REPO/.cache/cluster}
PKI=$STATE/pki
LOGS=$STATE/logs
PIDS=$STATE/pids
KUBECONFIG_OUT=$STATE/kubeconfig

ETCD_PORT=${QSYS_ETCD_PORT:-12379}
ETCD_PEER_PORT=${QSYS_ETCD_PEER_PORT:-12380}
APISERVER_PORT=${QSYS_APISERVER_PORT:-16443}
CONTROLLER_MANAGER_PORT=${QSYS_CONTROLLER_MANAGER_PORT:-16444}
SCHEDULER_PORT=${QSYS_SCHEDULER_PORT:-16445}
KWOK_PORT=${QSYS_KWOK_PORT:-16446}
# Address plan (docs/testing.md): everything the cluster addresses lies in
# 198.18.0.0/15. Pods of the real node in 198.18.0.0/16 (the bridge's own
# address, NODE_IP, is the node's and the apiserver's address for pods),
# Services in 198.19.0.0/16.
SERVICE_CIDR=198.19.0.0/16
KUBERNETES_SERVICE_IP=198.19.0.1
DNS_SERVICE_IP=198.19.0.10
NODE_POD_CIDR=198.18.0.0/16
NODE_IP=198.18.0.1
# The main plane's unreachable route for the range (hack/fence.sh).
FENCE_METRIC=4090
# One real node (containerd, kubelet, kube-proxy, CoreDNS, kube-router) beside
# the fake ones; hack/cluster/node.sh. QSYS_REAL_NODE=0 leaves it out (for a
# second control plane on the same machine: the node's host state is
# machine-wide, so only one checkout can run it at a time); =lazy prepares the
# host (record, bridge) but leaves the node to a later `node.sh ensure-up` (the
# e2e tests' `real_node` fixture).
REAL_NODE=${QSYS_REAL_NODE:-1}
case $REAL_NODE in 0 | 1 | lazy) ;; *)
	echo "cluster: ERROR: QSYS_REAL_NODE=$REAL_NODE: use 1, 0 or lazy" >&2
	exit 1
	;;
esac
NODE_NAME=qsys-node
NODE=$STATE/node
KUBELET_PORT=${QSYS_KUBELET_PORT:-16447}
KUBELET_HEALTHZ_PORT=${QSYS_KUBELET_HEALTHZ_PORT:-16448}
KUBE_PROXY_HEALTHZ_PORT=${QSYS_KUBE_PROXY_HEALTHZ_PORT:-16449}
KUBE_PROXY_METRICS_PORT=${QSYS_KUBE_PROXY_METRICS_PORT:-16450}
# Pod addresses handed out by kwok. No pod really runs; the range is loopback
# so that a test may stand in for a pod by binding a real process to its IP,
# and so that nothing ever dials a non-loopback address.
POD_CIDR=${QSYS_POD_CIDR:-127.77.0.1/16}
FAKE_NODES=${QSYS_FAKE_NODES:-2}
# Client-side rate limits (requests/s) of the controller manager's controllers (each has
# its own client) and of the scheduler; upstream defaults unless set. At 20/s the
# Deployment and ReplicaSet controllers alone need minutes for a thousand Deployments
# (bench/operator_scale.py raises them).
CONTROLLER_MANAGER_QPS=${QSYS_CONTROLLER_MANAGER_QPS:-20}
SCHEDULER_QPS=${QSYS_SCHEDULER_QPS:-50}
# Deployments and ReplicaSets the controller manager syncs at once (upstream default 5).
CONTROLLER_MANAGER_SYNCS=${QSYS_CONTROLLER_MANAGER_SYNCS:-5}
# With the real node the apiserver listens on NODE_IP (inside the cluster's
# range, reachable from pods as the "kubernetes" Service) instead of loopback.
if [[ $REAL_NODE != 0 ]]; then APISERVER_HOST=$NODE_IP; else APISERVER_HOST=127.0.0.1; fi
APISERVER_URL=https://$APISERVER_HOST:$APISERVER_PORT

# Start order; down.sh stops in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
# The real node's processes, in start order (hack/cluster/node.sh).
NODE_COMPONENTS=(containerd kube-proxy kubelet kube-router)

KUBE_BIN=$(bash "$REPO/hack/tools/build.sh" --dir kube)
# The control plane's own binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler) come from this tool group: `kube` (the newest Kubernetes) or
# `kube-floor` (the oldest supported minor, docs/install.md). etcd, kwok and
# kubectl always come from `kube`.
if [[ $PLANE == floor ]]; then KUBE_GROUP=${QSYS_KUBE_GROUP:-kube-floor}; else KUBE_GROUP=${QSYS_KUBE_GROUP:-kube}; fi
case $KUBE_GROUP in kube | kube-floor) ;; *) echo "cluster: QSYS_KUBE_GROUP must be kube or kube-floor, not '$KUBE_GROUP'" >&2 && exit 1 ;; esac
CONTROL_PLANE_BIN=$(bash "$REPO/hack/tools/build.sh" --dir "$KUBE_GROUP")
NODE_BIN=$(bash "$REPO/hack/tools/build.sh" --dir node)
COREDNS_BIN=$(bash "$REPO/hack/tools/build.sh" --dir coredns)
KUBE_ROUTER_BIN=$(bash "$REPO/hack/tools/build.sh" --dir kube-router)
METRICS_SERVER_BIN=$(bash "$REPO/hack/tools/build.sh" --dir metrics-server)

log() { echo "cluster: $*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

bin_path() {
	case $1 in
	containerd) echo /usr/bin/containerd ;;
	kubelet | kube-proxy) echo "$NODE_BIN/$1" ;;
	kube-router) echo "$KUBE_ROUTER_BIN/kube-router" ;;
	kube-apiserver | kube-controller-manager | kube-scheduler) echo "$CONTROL_PLANE_BIN/$1" ;;
	*) echo "$KUBE_BIN/$1" ;;
	esac
}

# Pid of a running component we started, or nothing. A pid only counts when
# its command line is our binary with a path under our state directory in its
# arguments ("$STATE/": .cache/cluster is a prefix of the other planes'
# .cache/cluster-PLANE), so a recycled pid or another plane's is never mistaken
# for ours.
component_pid() {
	local pid
	pid=$(cat "$PIDS/$1.pid" 2>/dev/null) || return 0
	if is_ours "$pid" "$1"; then echo "$pid"; fi
}

is_ours() {
	local pid=$1 name=$2 args=()
	{ mapfile -d '' -t args <"/proc/$pid/cmdline"; } 2>/dev/null || return 1
	[[ ${args[0]:-} == "$(bin_path "$name")" && ${args[*]} == *"$STATE/"* ]]
}

# Every process running one of our binaries with our state directory in its
# arguments, whether or not a pid file still names it. NAMES: component names
# (default: all).
all_our_pids() {
	local dir name args=() names=("$@") paths=()
	((${#names[@]})) || names=("${COMPONENTS[@]}" "${NODE_COMPONENTS[@]}")
	for name in "${names[@]}"; do paths+=("$(bin_path "$name")"); done
	# Builtins only in the loop: it runs for every process on the machine.
	for dir in /proc/[0-9]*; do
		{ mapfile -d '' -t args <"$dir/cmdline"; } 2>/dev/null || continue
		[[ ${args[*]} == *"$STATE/"* ]] || continue
		for name in "${paths[@]}"; do
			if [[ ${args[0]:-} == "$name" ]]; then echo "${dir#/proc/}"; fi
		done
	done
}

readyz() {
	curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
		"$APISERVER_URL/readyz" >/dev/null 2>&1
}

# kubeconfig FILE USER: a kubeconfig for USER's client certificate.
kubeconfig() {
	local tmp
	tmp=$(mktemp "$1.XXXXXX")
	cat >"$tmp" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: qsys-local
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$2.crt")
    client-key-data: $(base64 -w0 "$PKI/$2.key")
contexts:
- name: qsys-local
  context:
    cluster: qsys-local
    user: $2
current-context: qsys-local
KUBECONFIG
	chmod 600 "$tmp"
	mv "$tmp" "$1"
}
start() {
	local name=$1
	shift
	# setsid: a Ctrl-C in the terminal that ran this script must not reach the
	# components; down.sh stops them.
	setsid "$(bin_path "$name")" "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
	echo $! >"$PIDS/$name.pid"
}

# wait_for WHAT SECONDS COMPONENT CMD...: poll CMD until it succeeds, failing
# early (with the log's tail) when COMPONENT exits.
wait_for() {
	local what=$1 timeout=$2 name=$3 deadline
	shift 3
	deadline=$(($(date +%s) + timeout))
	until "$@"; do
		# kill -0, not component_pid: right after start the pid may still be
		# setsid's, before it execs the component.
		if ! kill -0 "$(cat "$PIDS/$name.pid")" 2>/dev/null; then
			tail -n 30 "$LOGS/$name.log" >&2 || true
			die "$name exited while waiting for $what (log: $LOGS/$name.log)"
		fi
		if (($(date +%s) > deadline)); then
			tail -n 30 "$LOGS/$name.log" >&2 || true
			die "timed out after ${timeout}s waiting for $what (log: $LOGS/$name.log)"
		fi
		sleep 0.2
	done
}
