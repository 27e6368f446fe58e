#!/usr/bin/env bash
# A Docker engine for the kind path that changes nothing on the host for good
# (docs/testing.md, "kind"). Debian's docker.io (hack/kind/install-docker.sh), never the
# system service: this script starts dockerd with its own data and exec roots, and its
# stop puts the host back as `start` recorded it.
#   docker.sh start     record the host state, start dockerd, create the `kind` network
#   docker.sh stop      remove every container, network and process; restore the host
#   docker.sh env       print `export DOCKER_HOST=...` for this engine
#   docker.sh snapshot  the host state the teardown test compares (node.sh snapshot + Docker's)
# dockerd runs with: no default bridge, no iptables/ip6tables rules, no IP forwarding
# nor masquerading, DNS 127.0.0.1 for containers (Docker's embedded DNS would forward to
# the host's resolver otherwise), address pools and the `kind` network inside
# 198.19.192.0/18, cgroups under `qsys-kind`, and runc behind hack/kind/runc-wrapper.
# Only one engine at a time, and never while the local cluster's real node runs: both
# set the same host-wide sysctls.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ROOT=${QSYS_KIND_DOCKER_ROOT:-/var/lib/qsys-kind}
RUN=${QSYS_KIND_DOCKER_RUN:-/run/qsys-kind}
SOCK=$RUN/docker.sock
RECORD=$ROOT.record
LOG=$ROOT.log
NETWORK_SUBNET=198.19.200.0/24
NETWORK_GATEWAY=198.19.200.1
ADDRESS_POOL=198.19.192.0/18
BRIDGE=qkind0
# This engine's unreachable route for 198.18.0.0/15 (hack/fence.sh).
FENCE_METRIC=4091
CGROUP_PARENT=qsys-kind
REAL_NODE_OWNER=/run/qsys-node.owner
# Host paths Docker or kind may create whatever they are told; removed by stop only
# when they did not exist before.
FIXED_PATHS=(/lib/modules /etc/docker/key.json /var/lib/docker /run/docker /run/docker.sock
	/run/containerd /var/lib/containerd "${HOME:-/root}/.docker")
VOLATILE_SYSCTLS='^(fs\.(dentry-state|file-nr|inode-nr|inode-state|quota\.)|kernel\.(ns_last_pid|random\.|pty\.nr|tainted|sched_domain)|net\.netfilter\.nf_conntrack_count|net\.ipv[46]\.(conf|neigh)\.[^.]*(veth|qkind0|qsys0|cni)|net\.ipv6\.conf\.[^.]+\.stable_secret|net\.ipv4\.route\.|net\.ipv6\.route\.|vm\.(stat_refresh|drop_caches|compact_memory)|fs\.binfmt_misc\.|dev\.cdrom|kernel\.(perf_event_max|usermodehelper)|net\.core\.bpf_jit)'

log() { echo "kind-docker: $*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}
docker() { command /usr/bin/docker -H "unix://$SOCK" "$@"; }
sysctls() { sysctl -a 2>/dev/null | grep -Ev "$VOLATILE_SYSCTLS" | sort; }
dockerd_pid() {
	local pid
	pid=$(cat "$RUN/dockerd.pid" 2>/dev/null) || return 1
	[[ -d /proc/$pid ]] && echo "$pid"
}
# Every process of this engine: dockerd, its containerd and shims, docker-proxy, and
# whatever runs in its containers' cgroups.
engine_pids() {
	local dir args=()
	for dir in /proc/[0-9]*; do
		{ mapfile -d '' -t args <"$dir/cmdline"; } 2>/dev/null || continue
		[[ ${args[*]} == *"$RUN"* || ${args[*]} == *"$ROOT/"* ]] && echo "${dir#/proc/}"
	done
	find /sys/fs/cgroup/*/"$CGROUP_PARENT" /sys/fs/cgroup/"$CGROUP_PARENT" -name cgroup.procs \
		-exec cat {} + 2>/dev/null
	return 0
}
engine_mounts() {
	awk '{print $5}' /proc/self/mountinfo | grep -E "^($ROOT|$RUN)(/|$)" |
		awk '{print length, $0}' | sort -rn | cut -d' ' -f2- || true
}

cmd_start() {
	(($(id -u) == 0)) || die "needs root (dockerd)"
	[[ -x /usr/sbin/dockerd ]] || die "no dockerd: run hack/kind/install-docker.sh (make kind-deps)"
	[[ ! -f $REAL_NODE_OWNER ]] ||
		die "the local cluster's real node runs ($(cat "$REAL_NODE_OWNER")): stop it first (make cluster-down)"
	if dockerd_pid >/dev/null; then
		docker info >/dev/null 2>&1 && return 0
		die "dockerd ($(dockerd_pid)) runs but does not answer; run 'hack/kind/docker.sh stop'"
	fi
	# A record left by a start whose stop did not finish is the older truth: keep it.
	if [[ ! -f $RECORD/.complete ]]; then
		rm -rf "$RECORD"
		mkdir -p "$RECORD"
		sysctls >"$RECORD/sysctl"
		ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort >"$RECORD/links"
		local path
		for path in "${FIXED_PATHS[@]}"; do
			if [[ -e $path || -L $path ]]; then echo "$path"; fi
		done >"$RECORD/paths"
		touch "$RECORD/.complete"
	fi
	bash "$REPO/hack/fence.sh" up "$FENCE_METRIC"
	mkdir -p "$ROOT" "$RUN"
	echo '{}' >"$RUN/daemon.json"
	log "starting dockerd (data $ROOT, log $LOG)"
	setsid /usr/sbin/dockerd \
		--config-file "$RUN/daemon.json" \
		--data-root "$ROOT" --exec-root "$RUN" --pidfile "$RUN/dockerd.pid" -H "unix://$SOCK" \
		--bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
		--dns 127.0.0.1 --default-address-pool "base=$ADDRESS_POOL,size=24" \
		--cgroup-parent "/$CGROUP_PARENT" --exec-opt native.cgroupdriver=cgroupfs \
		--storage-driver overlay2 \
		--add-runtime "qsys-runc=$HERE/runc-wrapper" --default-runtime qsys-runc \
		</dev/null >"$LOG" 2>&1 &
	for _ in $(seq 1 150); do
		if docker info >/dev/null 2>&1; then break; fi
		if ! kill -0 $! 2>/dev/null; then
			tail -20 "$LOG" >&2
			cmd_stop || true
			die "dockerd exited"
		fi
		sleep 0.2
	done
	docker info >/dev/null 2>&1 || {
		cmd_stop || true
		die "dockerd did not answer within 30 s (log: $LOG)"
	}
	docker network inspect kind >/dev/null 2>&1 ||
		docker network create kind --driver bridge \
			--subnet "$NETWORK_SUBNET" --gateway "$NETWORK_GATEWAY" \
			-o com.docker.network.bridge.name="$BRIDGE" \
			-o com.docker.network.bridge.enable_ip_masquerade=false \
			-o com.docker.network.bridge.host_binding_ipv4=127.0.0.1 >/dev/null
}

cmd_stop() {
	local failed=0 pids
	if dockerd_pid >/dev/null && docker info >/dev/null 2>&1; then
		mapfile -t ids < <(docker ps -aq)
		((${#ids[@]} == 0)) || docker rm -f -v "${ids[@]}" >/dev/null 2>&1 || true
		docker network rm kind >/dev/null 2>&1 || true
	fi
	if pid=$(dockerd_pid); then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 1 75); do [[ -d /proc/$pid ]] || break && sleep 0.2; done
	fi
	for _ in $(seq 1 25); do
		mapfile -t pids < <(engine_pids | sort -u)
		((${#pids[@]})) || break
		kill -KILL "${pids[@]}" 2>/dev/null || true
		sleep 0.2
	done
	mapfile -t pids < <(engine_pids | sort -u)
	((${#pids[@]} == 0)) || {
		log "processes of the engine would not die: ${pids[*]}"
		failed=1
	}
	local m mounts
	for _ in 1 2 3; do
		mapfile -t mounts < <(engine_mounts)
		((${#mounts[@]})) || break
		for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
	done
	mapfile -t mounts < <(engine_mounts)
	((${#mounts[@]} == 0)) || {
		log "could not unmount: ${mounts[*]}"
		failed=1
	}
	local top
	for top in /sys/fs/cgroup/*/"$CGROUP_PARENT" /sys/fs/cgroup/"$CGROUP_PARENT"; do
		[[ -d $top ]] || continue
		find "$top" -depth -type d -exec rmdir {} + 2>/dev/null || true
		[[ ! -d $top ]] || {
			log "could not remove the cgroup $top"
			failed=1
		}
	done
	ip link delete "$BRIDGE" 2>/dev/null || true
	bash "$REPO/hack/fence.sh" down "$FENCE_METRIC"
	if [[ -f $RECORD/.complete ]]; then
		local link key value path
		while read -r link; do
			[[ $link == veth* ]] || continue
			grep -qxF "$link" "$RECORD/links" || ip link delete "$link" 2>/dev/null || true
		done < <(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1)
		while IFS= read -r line; do
			key=${line%% = *} value=${line#* = }
			sysctl -qw "$key=$value" >/dev/null 2>&1 || log "could not restore sysctl $key"
		done < <(comm -23 "$RECORD/sysctl" <(sysctls) | grep ' = ')
		for path in "${FIXED_PATHS[@]}"; do
			[[ -e $path || -L $path ]] || continue
			grep -qxF "$path" "$RECORD/paths" && continue
			[[ -z $(awk -v p="$path" '$5 == p || index($5, p "/") == 1' /proc/self/mountinfo) ]] || {
				log "not removing $path: still mounted"
				failed=1
				continue
			}
			rm -rf "$path"
		done
	fi
	((failed == 0)) || return 1
	rm -rf "$ROOT" "$RUN" "$LOG"
	rm -rf "$RECORD"
}

cmd_snapshot() {
	bash "$REPO/hack/cluster/node.sh" snapshot
	echo "## kind paths"
	local path
	for path in "${FIXED_PATHS[@]}" "$ROOT" "$RUN" "$RECORD"; do
		if [[ -e $path || -L $path ]]; then echo "$path"; fi
	done
	echo "## kind cgroups"
	find /sys/fs/cgroup -mindepth 1 -maxdepth 3 -type d -name "$CGROUP_PARENT*" | sort
	echo "## kind mounts"
	engine_mounts | sort
	echo "## kind processes"
	ps -eo comm= | grep -E '^(dockerd|docker-proxy|containerd|containerd-shim|systemd|kubelet)' | sort || true
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop || die "teardown incomplete; run it again (hack/kind/docker.sh stop)" ;;
env) echo "export DOCKER_HOST=unix://$SOCK" ;;
snapshot) cmd_snapshot ;;
*) die "usage: docker.sh start|stop|env|snapshot" ;;
esac
