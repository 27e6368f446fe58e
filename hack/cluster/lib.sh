# shellcheck shell=bash disable=SC2034 # variables used by the scripts sourcing this
# Shared settings of the local control plane (sourced by up.sh and down.sh).
# Every port is on 127.0.0.1 and can be overridden from the environment.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
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
SERVICE_CIDR=${QSYS_SERVICE_CIDR:-10.96.0.0/16}
# Pod addresses handed out by kwok. No pod really runs; the range is loopback
# so that a test may stand in for a pod by binding a real process to its IP,
# and so that nothing ever dials a non-loopback address.
POD_CIDR=${QSYS_POD_CIDR:-127.77.0.1/16}
FAKE_NODES=${QSYS_FAKE_NODES:-2}
APISERVER_URL=https://127.0.0.1:$APISERVER_PORT

# Start order; down.sh stops in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

KUBE_BIN=$(bash "$REPO/hack/tools/build.sh" --dir kube)

log() { echo "cluster: $*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# Pid of a running component we started, or nothing. A pid only counts when
# its command line is our binary with our state directory in its arguments, so
# a recycled pid is never mistaken for ours.
component_pid() {
	local pid
	pid=$(cat "$PIDS/$1.pid" 2>/dev/null) || return 0
	if is_ours "$pid" "$1"; then echo "$pid"; fi
}

is_ours() {
	local pid=$1 name=$2 args=()
	# Builtins only: all_our_pids runs this for every process on the machine.
	{ mapfile -d '' -t args <"/proc/$pid/cmdline"; } 2>/dev/null || return 1
	[[ ${args[0]:-} == "$KUBE_BIN/$name" && ${args[*]} == *"$STATE"* ]]
}

# Every process running one of our binaries with our state directory in its
# arguments, whether or not a pid file still names it.
all_our_pids() {
	local dir name
	for dir in /proc/[0-9]*; do
		for name in "${COMPONENTS[@]}"; do
			if is_ours "${dir#/proc/}" "$name"; then echo "${dir#/proc/}"; fi
		done
	done
}

readyz() {
	curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
		"$APISERVER_URL/readyz" >/dev/null 2>&1
}
