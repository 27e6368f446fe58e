#!/usr/bin/env bash
# The kind cluster of `make kind-up` / `make kind-down` (docs/testing.md, "kind").
#   cluster.sh up       Docker engine (docker.sh), the node image built here, `kind create
#                       cluster` from kind-config.yaml; kubeconfig in .cache/kind/kubeconfig;
#                       host routes to the pods and the Service range via the nodes
#   cluster.sh load     `kind load image-archive` of the image builder's tarballs
#   cluster.sh down     delete the cluster and stop the engine (the host as before `up`)
# The engine and the cluster are machine-wide: one at a time, never beside the local
# cluster's real node (docker.sh refuses to start then).
set -euo pipefail -o errtrace
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CLUSTER=${KIND_CLUSTER:-qsys-e2e}
STATE=$REPO/.cache/kind
KUBECONFIG_OUT=$STATE/kubeconfig
ROUTES=$STATE/routes
PYTHON=${PYTHON:-python3}

log() { echo "kind: $*" >&2; }
kind_bin() {
	bash "$REPO/hack/tools/build.sh" kind
	echo "$(bash "$REPO/hack/tools/build.sh" --dir kind)/kind"
}
engine_up() { bash "$HERE/docker.sh" start; }
# Debian's docker client (the daemon's version) for kind and this script, whatever
# other docker comes first on PATH.
use_engine() {
	eval "$(bash "$HERE/docker.sh" env)"
	mkdir -p "$STATE/bin"
	ln -sf /usr/bin/docker "$STATE/bin/docker"
	export PATH=$STATE/bin:$PATH
}

cmd_up() {
	local kind node_tar image start
	kind=$(kind_bin)
	node_tar=$("$PYTHON" "$REPO/hack/kind_node.py" build)
	image=$("$PYTHON" "$REPO/hack/kind_node.py" name)
	engine_up
	use_engine
	# Whatever fails from here leaves nothing behind but kind's logs.
	trap 'trap - ERR; failed_up "$kind"' ERR
	if ! docker image inspect "$image" >/dev/null 2>&1; then
		start=$(date +%s)
		docker import \
			--change 'ENV container=docker' \
			--change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
			"$node_tar" "$image" >/dev/null
		log "imported the node image $image in $(($(date +%s) - start))s"
	fi
	mkdir -p "$STATE"
	if ! "$kind" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
		start=$(date +%s)
		# --retain: a failed create keeps its nodes for `kind export logs` (failed_up).
		"$kind" create cluster --name "$CLUSTER" --config "$REPO/kind-config.yaml" \
			--image "$image" --kubeconfig "$KUBECONFIG_OUT" --wait 180s --retain
		log "created the cluster in $(($(date +%s) - start))s"
	fi
	"$kind" get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_OUT"
	routes_up
	trap - ERR
	echo "export KUBECONFIG=$KUBECONFIG_OUT"
}

# The host reaches pods and ClusterIPs as it does on the local cluster's real node: each
# node's podCIDR via that node, the Service range via the worker (hack/kind_node.py
# routes). Recorded in $ROUTES for routes_down; the bridge's removal would drop them too.
routes_up() {
	local nodes cidr via
	for _ in $(seq 1 60); do
		nodes=$(docker exec "$CLUSTER-control-plane" \
			kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes -o json)
		if "$PYTHON" "$REPO/hack/kind_node.py" routes <<<"$nodes" >"$ROUTES.new" 2>/dev/null; then
			break
		fi
		sleep 1
	done
	"$PYTHON" "$REPO/hack/kind_node.py" routes <<<"$nodes" >"$ROUTES.new"
	routes_down
	mv "$ROUTES.new" "$ROUTES"
	while read -r cidr via; do
		ip route replace "$cidr" via "$via"
	done <"$ROUTES"
	log "host routes: $(tr '\n' ' ' <"$ROUTES")"
}

routes_down() {
	local cidr via
	[[ -f $ROUTES ]] || return 0
	while read -r cidr via; do
		ip route del "$cidr" via "$via" 2>/dev/null || true
	done <"$ROUTES"
	rm -f "$ROUTES"
}

failed_up() {
	rm -rf "$STATE/logs"
	"$1" export logs "$STATE/logs" --name "$CLUSTER" >/dev/null 2>&1 || true
	log "up failed (kind's logs: $STATE/logs); taking everything down"
	cmd_down
	exit 1
}

cmd_load() {
	local kind tarball
	kind=$(kind_bin)
	use_engine
	for tarball in $("$PYTHON" "$REPO/hack/images.py" paths); do
		[[ -f $tarball ]] || {
			log "no $tarball: run 'make images'"
			return 1
		}
		"$kind" load image-archive --name "$CLUSTER" "$tarball"
	done
}

cmd_down() {
	local kind
	trap - ERR
	kind=$(kind_bin)
	use_engine
	if docker info >/dev/null 2>&1; then
		"$kind" delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_OUT" >/dev/null 2>&1 || true
	fi
	routes_down
	rm -f "$KUBECONFIG_OUT"
	bash "$HERE/docker.sh" stop
}

case ${1:-} in
up) cmd_up ;;
load) cmd_load ;;
down) cmd_down ;;
*)
	echo "usage: cluster.sh up|load|down" >&2
	exit 1
	;;
esac
