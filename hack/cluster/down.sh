#!/usr/bin/env bash
# Stops every process of the local control plane of this checkout, including
# ones whose pid file is gone, and leaves none behind.
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "$0")/lib.sh"

stop_pids() { # SIGNAL PID...
	local sig=$1 pid
	shift
	for pid in "$@"; do kill "-$sig" "$pid" 2>/dev/null || true; done
}

# The real node first (its teardown needs no apiserver); also after a failed or
# killed run, whenever this checkout has node state on the host.
if [[ -f $STATE/host-before/.complete || -n $(all_our_pids "${NODE_COMPONENTS[@]}") ]]; then
	bash "$REPO/hack/cluster/node.sh" down
fi

# Reverse start order: clients first, etcd last.
for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
	pid=$(component_pid "${COMPONENTS[i]}")
	if [[ -n $pid ]]; then stop_pids TERM "$pid"; fi
done
for _ in $(seq 1 50); do
	mapfile -t left < <(all_our_pids)
	((${#left[@]} == 0)) && break
	stop_pids TERM "${left[@]}"
	sleep 0.2
done
mapfile -t left < <(all_our_pids)
if ((${#left[@]} > 0)); then
	log "killing processes that ignored SIGTERM: ${left[*]}"
	stop_pids KILL "${left[@]}"
	sleep 0.5
fi
mapfile -t left < <(all_our_pids)
((${#left[@]} == 0)) || die "could not stop: ${left[*]}"
rm -rf "$PIDS" "$STATE/etcd"
if [[ $PLANE == main ]]; then bash "$REPO/hack/fence.sh" down "$FENCE_METRIC"; fi
rm -f "$STATE/kubeconfig"
log "stopped"
