#!/usr/bin/env bash
# The real node of the local cluster: containerd + runc, kubelet, kube-proxy
# (iptables), the CNI bridge, CoreDNS, metrics-server and kube-router's
# NetworkPolicy firewall, beside kwok's fake nodes. Needs root. See
# docs/testing.md ("The real node").
#   node.sh record    snapshot the host state the node changes (kept if present)
#   node.sh net-up    the bridge and its address (before the apiserver binds it)
#   node.sh up        start the node's processes and wait until the node is Ready
#   node.sh ensure-up `up` unless the node already runs (after QSYS_REAL_NODE=lazy)
#   node.sh import-images   import the OCI tarballs of `make images` (if changed)
#   node.sh metrics-server  add metrics-server to a running node that started without it
#   node.sh down      stop everything and put the host back as recorded
#   node.sh snapshot  print the host state the teardown test compares
#   node.sh registry-trust HOST:PORT CA   pull from that loopback registry over TLS (CA)
#   node.sh registry-untrust HOST:PORT    forget it again
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "$0")/lib.sh"

BRIDGE=qsys0
RECORD=$STATE/host-before
OWNER=/run/qsys-node.owner
CONTAINERD_SOCK=$NODE/containerd/containerd.sock
# Paths the node's programs use whatever they are told; removed by down only
# when they did not exist before.
FIXED_PATHS=(/run/containerd /var/lib/cni /var/lib/kubelet /var/log/containers /var/log/pods
	/run/netns /etc/cni /opt/cni /etc/kubernetes)
# The pause image of every pod sandbox; imported by `make images`.
PAUSE_IMAGE=${QSYS_PAUSE_IMAGE:-registry.k8s.io/pause:3.10.2}
# Sysctls that change by themselves; never restored nor compared.
VOLATILE_SYSCTLS='^(fs\.(dentry-state|file-nr|inode-nr|inode-state|quota\.)|kernel\.(ns_last_pid|random\.|pty\.nr|tainted|sched_domain)|net\.netfilter\.nf_conntrack_count|net\.ipv[46]\.(conf|neigh)\.[^.]*(veth|qsys0|cni)|net\.ipv6\.conf\.[^.]+\.stable_secret|net\.ipv4\.route\.|net\.ipv6\.route\.|vm\.(stat_refresh|drop_caches|compact_memory)|fs\.binfmt_misc\.|dev\.cdrom|kernel\.(perf_event_max|usermodehelper)|net\.core\.bpf_jit)'
RULE_CHAINS='^(KUBE-|CNI-)'
ADDONS=$REPO/hack/cluster/addons
ctr() { command ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }
kubectl() { "$KUBE_BIN/kubectl" --kubeconfig="$STATE/admin.kubeconfig" "$@"; }

require_root() { (($(id -u) == 0)) || die "the real node needs root (set QSYS_REAL_NODE=0 for a control plane with fake nodes only)"; }

sysctls() { sysctl -a 2>/dev/null | grep -Ev "$VOLATILE_SYSCTLS" | sort; }
nft_tables() { nft list tables 2>/dev/null | sort; }
# Mount points under the node's directories, deepest first.
node_mounts() {
	awk '{print $5}' /proc/self/mountinfo |
		grep -E "^($NODE|/run/containerd|/var/lib/kubelet|/run/netns|/var/run/netns)(/|$)" |
		awk '{print length, $0}' | sort -rn | cut -d' ' -f2- || true
}

# record: what the node will change, as it is now. An existing record (from a
# run that did not get to its teardown) is the older truth and is kept.
cmd_record() {
	require_root
	if [[ -f $OWNER && $(cat "$OWNER") != "$STATE" ]]; then
		die "a real node of another checkout ($(cat "$OWNER")) is running; stop it there ('make cluster-down') or set QSYS_REAL_NODE=0"
	fi
	if [[ -f $RECORD/.complete ]]; then return 0; fi
	rm -rf "$RECORD"
	mkdir -p "$RECORD"
	sysctls >"$RECORD/sysctl"
	nft_tables >"$RECORD/nft-tables"
	ipset list -n 2>/dev/null | sort >"$RECORD/ipsets"
	ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort >"$RECORD/links"
	ip netns list | awk '{print $1}' | sort >"$RECORD/netns"
	local path
	for path in "${FIXED_PATHS[@]}"; do
		if [[ -e $path || -L $path ]]; then echo "$path"; fi
	done >"$RECORD/paths"
	echo "$STATE" >"$OWNER"
	touch "$RECORD/.complete"
}

cmd_net_up() {
	require_root
	[[ -f $RECORD/.complete ]] || die "no host-state record: run 'node.sh record' first"
	if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
		ip link add "$BRIDGE" type bridge
	fi
	# No IPv6 on the bridge: the cluster is IPv4 inside 198.18.0.0/15 only.
	sysctl -qw "net.ipv6.conf.$BRIDGE.disable_ipv6=1" 2>/dev/null || true
	ip addr replace "$NODE_IP/16" dev "$BRIDGE"
	ip link set "$BRIDGE" up
	# Host-to-Service traffic leaves from the bridge address (pods route only
	# 198.18.0.0/15 back), and a Service address without endpoints never
	# reaches another interface.
	ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
}

write_configs() {
	mkdir -p "$NODE"/{containerd,cni/net.d,cni/ipam,certs.d/_default,kubelet,pod-logs,volume-plugins}
	# Any image pull goes to a closed loopback port: images are imported, never pulled.
	cat >"$NODE/certs.d/_default/hosts.toml" <<-'EOF'
		server = "http://127.0.0.1:9"
	EOF
	cat >"$NODE/containerd.toml" <<-EOF
		version = 2
		root = "$NODE/containerd/root"
		state = "$NODE/containerd/state"
		disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
		  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
		[grpc]
		  address = "$CONTAINERD_SOCK"
		[ttrpc]
		  address = "$CONTAINERD_SOCK.ttrpc"
		[debug]
		  address = ""
		[metrics]
		  address = ""
		[plugins."io.containerd.internal.v1.opt"]
		  path = "$NODE/containerd/opt"
		[plugins."io.containerd.grpc.v1.cri"]
		  sandbox_image = "$PAUSE_IMAGE"
		  restrict_oom_score_adj = true
		  netns_mounts_under_state_dir = true
		  disable_apparmor = true
		  enable_selinux = false
		  stream_server_address = "127.0.0.1"
		  stream_server_port = "0"
		  [plugins."io.containerd.grpc.v1.cri".containerd]
		    snapshotter = "overlayfs"
		    default_runtime_name = "runc"
		    discard_unpacked_layers = false
		    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
		      runtime_type = "io.containerd.runc.v2"
		      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
		        SystemdCgroup = false
		        Root = "$NODE/containerd/runc"
		  [plugins."io.containerd.grpc.v1.cri".cni]
		    bin_dir = "/usr/lib/cni"
		    conf_dir = "$NODE/cni/net.d"
		    max_conf_num = 1
		  [plugins."io.containerd.grpc.v1.cri".registry]
		    config_path = "$NODE/certs.d"
	EOF
	cat >"$NODE/cni/net.d/10-qsys.conflist" <<-EOF
		{
		  "cniVersion": "1.0.0",
		  "name": "qsys-pods",
		  "plugins": [{
		    "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
		    "ipam": {
		      "type": "host-local", "dataDir": "$NODE/cni/ipam",
		      "ranges": [[{"subnet": "$NODE_POD_CIDR", "rangeStart": "198.18.1.1", "rangeEnd": "198.18.255.254", "gateway": "$NODE_IP"}]],
		      "routes": [{"dst": "198.18.0.0/15"}]
		    }
		  }]
		}
	EOF
	for user in kubelet kube-proxy node-addons; do
		kubeconfig "$NODE/$user.kubeconfig" "$user"
	done
	cat >"$NODE/kubelet.yaml" <<-EOF
		apiVersion: kubelet.config.k8s.io/v1beta1
		kind: KubeletConfiguration
		failCgroupV1: false
		cgroupDriver: cgroupfs
		containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
		address: $NODE_IP
		port: $KUBELET_PORT
		readOnlyPort: 0
		tlsCertFile: $PKI/kubelet-serving.crt
		tlsPrivateKeyFile: $PKI/kubelet-serving.key
		healthzBindAddress: 127.0.0.1
		healthzPort: $KUBELET_HEALTHZ_PORT
		authentication:
		  anonymous: {enabled: false}
		  webhook: {enabled: true}
		  x509: {clientCAFile: $PKI/ca.crt}
		authorization: {mode: Webhook}
		clusterDomain: cluster.local
		clusterDNS: [$DNS_SERVICE_IP]
		resolvConf: ""
		podLogsDir: $NODE/pod-logs
		volumePluginDir: $NODE/volume-plugins
		hairpinMode: hairpin-veth
		registerWithTaints:
		- {key: qsys.io/node, value: real, effect: NoSchedule}
		failSwapOn: false
		imageGCHighThresholdPercent: 100
		imageGCLowThresholdPercent: 99
		evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
		maxPods: 60
		serializeImagePulls: false
		shutdownGracePeriod: 0s
		syncFrequency: 10s
		rotateCertificates: false
		serverTLSBootstrap: false
		protectKernelDefaults: false
		localStorageCapacityIsolation: true
		logging: {format: text}
	EOF
	cat >"$NODE/kube-proxy.yaml" <<-EOF
		apiVersion: kubeproxy.config.k8s.io/v1alpha1
		kind: KubeProxyConfiguration
		mode: iptables
		clientConnection: {kubeconfig: $NODE/kube-proxy.kubeconfig}
		hostnameOverride: $NODE_NAME
		clusterCIDR: $NODE_POD_CIDR
		bindAddress: $NODE_IP
		healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
		metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
		nodePortAddresses: [$NODE_IP/32]
		iptables: {localhostNodePorts: false}
		conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s, udpTimeout: 0s, udpStreamTimeout: 0s}
	EOF
}

# Images made of one or two pinned Go binaries alone (no base image, no shell),
# packed with umoci into the tool group's cache directory and imported once per
# containerd root (the stamp, as for `make images`).
# binary_image REF ENTRYPOINT USER BINARY:PATH-IN-IMAGE...
binary_image() {
	local ref=$1 entry=$2 user=$3 name=${1%%:*} tag=${1##*:} out work spec first=${4%%:*}
	name=${name##*/}
	shift 3
	out=$(dirname "$first")/../$name-image.tar
	if [[ ! -f $out ]]; then
		work=$(mktemp -d)
		for spec in "$@"; do
			mkdir -p "$work/rootfs$(dirname "${spec#*:}")"
			cp "${spec%%:*}" "$work/rootfs${spec#*:}"
		done
		umoci init --layout "$work/layout" >/dev/null
		umoci new --image "$work/layout:$tag"
		tar -C "$work/rootfs" --numeric-owner --owner=0 --group=0 --mtime=@0 -cf "$work/layer.tar" .
		umoci raw add-layer --image "$work/layout:$tag" "$work/layer.tar"
		umoci config --image "$work/layout:$tag" --config.entrypoint "$entry" --config.user "$user"
		umoci gc --layout "$work/layout"
		tar -C "$work/layout" -cf "$out.tmp" .
		mv "$out.tmp" "$out"
		rm -rf "$work"
	fi
	local stamp=$NODE/containerd/root/.imported key
	key=$(stat -c '%n %s %Y' "$out" | sha256sum | cut -c1-16)
	if ! grep -qxF "$key" "$stamp" 2>/dev/null || ! grep -qxF "$ref" <<<"$(ctr images ls -q)"; then
		ctr images import --base-name "${ref%%:*}" "$out" >/dev/null
		echo "$key" >>"$stamp"
	fi
}

# The add-ons (CoreDNS, metrics-server) run as pods, as in any cluster, so that
# NetworkPolicies that admit DNS by its pod labels (the gateways') mean here
# what they mean elsewhere. Each image is its binary alone, packed from its
# tool group with umoci.
COREDNS_IMAGE=qsys.local/coredns:v1.15.0
METRICS_SERVER_IMAGE=qsys.local/metrics-server:v0.8.0
# The Prometheus Operator's Prometheus pods (tests/e2e/test_prometheus_real_node.py):
# prometheus and the operator's config reloader, at the paths the operator runs
# them from; imported when their tool groups are built (`make cluster-tools`), at the
# node's start or later by `node.sh import-images` (under `make test` the node may start
# before these groups are built).
PROMETHEUS_IMAGE=qsys.local/prometheus:v3.13.5
CONFIG_RELOADER_IMAGE=qsys.local/prometheus-config-reloader:v0.85.0
PROMETHEUS_BIN=$(bash "$REPO/hack/tools/build.sh" --dir prometheus)
PROMETHEUS_OPERATOR_BIN=$(bash "$REPO/hack/tools/build.sh" --dir prometheus-operator)

import_binary_images() {
	binary_image "$COREDNS_IMAGE" /coredns 65532:65532 "$COREDNS_BIN/coredns:/coredns"
	if metrics_server_built; then
		binary_image "$METRICS_SERVER_IMAGE" /metrics-server 65532:65532 \
			"$METRICS_SERVER_BIN/metrics-server:/metrics-server"
	fi
	if [[ -x $PROMETHEUS_BIN/prometheus ]]; then
		binary_image "$PROMETHEUS_IMAGE" /bin/prometheus 65534:65534 \
			"$PROMETHEUS_BIN/prometheus:/bin/prometheus"
	fi
	if [[ -x $PROMETHEUS_OPERATOR_BIN/prometheus-config-reloader ]]; then
		binary_image "$CONFIG_RELOADER_IMAGE" /bin/prometheus-config-reloader 65534:65534 \
			"$PROMETHEUS_OPERATOR_BIN/prometheus-config-reloader:/bin/prometheus-config-reloader"
	fi
}

# addon FILE: hack/cluster/addons/FILE with each ${NAME} replaced by the value of the
# shell variable NAME (the images, the DNS Service address, the certificates).
addon() {
	local text name
	text=$(<"$ADDONS/$1")
	while [[ $text =~ \$\{([A-Z_]+)\} ]]; do
		name=${BASH_REMATCH[1]}
		[[ -n ${!name:-} ]] || die "addons/$1: \${$name} is empty"
		text=${text//"\${$name}"/"${!name}"}
	done
	printf '%s\n' "$text"
}

# metrics-server (the resource metrics API) is the one add-on the node may start
# without: under `make test` the node starts once its other groups are built, and the
# tests that need the metrics API add it (`node.sh metrics-server`) once its group is.
metrics_server_built() { [[ -x $METRICS_SERVER_BIN/metrics-server ]]; }

# metrics-server, with the certificates of hack/cluster/pki.sh.
metrics_server_manifest() {
	local METRICS_SERVER_TLS_CRT METRICS_SERVER_TLS_KEY CLUSTER_CA_CRT
	METRICS_SERVER_TLS_CRT=$(base64 -w0 "$PKI/metrics-server.crt")
	METRICS_SERVER_TLS_KEY=$(base64 -w0 "$PKI/metrics-server.key")
	CLUSTER_CA_CRT=$(base64 -w0 "$PKI/ca.crt")
	addon metrics-server.yaml
}

# The aggregated API answers once metrics-server has scraped the node.
metrics_api_available() {
	[[ $(kubectl get apiservice v1beta1.metrics.k8s.io -o jsonpath='{.status.conditions[?(@.type=="Available")].status}' 2>/dev/null) == True ]]
}

# What a failed start shows besides the component's log: the add-on pods and
# the last lines of each one's containers.
addon_diagnostics() {
	local pod
	kubectl -n kube-system get pods -o wide >&2 2>&1 || return 0
	for pod in $(kubectl -n kube-system get pods -o name 2>/dev/null); do
		log "$pod:"
		kubectl -n kube-system logs "$pod" --all-containers --tail=15 >&2 2>&1 || true
		kubectl -n kube-system logs "$pod" --all-containers --tail=15 --previous >&2 2>&1 || true
	done
}

coredns_ready() {
	[[ $(kubectl -n kube-system get deployment coredns -o jsonpath='{.status.readyReplicas}' 2>/dev/null) == 1 ]]
}

# The OCI tarballs to import: QSYS_IMAGE_TARBALLS (space-separated), else
# those `make images` builds (hack/images.py paths).
image_tarballs() {
	if [[ -n ${QSYS_IMAGE_TARBALLS:-} ]]; then
		tr ' ' '\n' <<<"$QSYS_IMAGE_TARBALLS"
	elif [[ -f $REPO/hack/images.py && -x $REPO/.venv/bin/python ]]; then
		"$REPO/.venv/bin/python" "$REPO/hack/images.py" paths
	fi
}

# Imports each tarball unless this containerd root already holds that exact
# file (kept across cluster-down: warm starts do not import again).
cmd_import_images() {
	local tarball key stamp=$NODE/containerd/root/.imported
	touch "$stamp"
	while read -r tarball; do
		[[ -n $tarball ]] || continue
		[[ -f $tarball ]] || die "image tarball $tarball is missing: run 'make images'"
		key=$(stat -c '%n %s %Y' "$tarball" | sha256sum | cut -c1-16)
		grep -qxF "$key" "$stamp" && continue
		log "importing $tarball"
		ctr images import "$tarball" >/dev/null
		echo "$key" >>"$stamp"
	done < <(image_tarballs)
}

ctr_answers() { ctr version >/dev/null 2>&1; }

node_ready() {
	[[ $(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

cmd_up() {
	require_root
	local name
	for name in "${NODE_COMPONENTS[@]}"; do
		[[ -x $(bin_path "$name") ]] || die "$(bin_path "$name") is missing: run 'make cluster-tools' (and 'make install' for containerd)"
	done
	[[ -x $COREDNS_BIN/coredns ]] || die "$COREDNS_BIN/coredns is missing: run 'make cluster-tools'"
	cmd_net_up
	write_configs
	start containerd --config "$NODE/containerd.toml" --log-level warn
	wait_for "containerd" 30 containerd test -S "$CONTAINERD_SOCK"
	wait_for "containerd's API" 30 containerd ctr_answers
	cmd_import_images
	if ! grep -qxF "$PAUSE_IMAGE" <<<"$(ctr images ls -q)"; then
		die "the pause image $PAUSE_IMAGE is not imported: run 'make images' (QSYS_PAUSE_IMAGE names another one)"
	fi
	import_binary_images
	start kube-proxy --config="$NODE/kube-proxy.yaml"
	start kubelet --config="$NODE/kubelet.yaml" --kubeconfig="$NODE/kubelet.kubeconfig" \
		--root-dir="$NODE/kubelet" --cert-dir="$NODE/kubelet/pki" \
		--hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
		--node-labels="qsys.io/node=real"
	wait_for "node $NODE_NAME Ready" 120 kubelet node_ready
	# kube-router finds its node (and its address) in the API: after registration.
	start kube-router --kubeconfig="$NODE/node-addons.kubeconfig" \
		--run-firewall=true --run-router=false --run-service-proxy=false \
		--service-cluster-ip-range="$SERVICE_CIDR" --hostname-override="$NODE_NAME" \
		--health-port=0
	addon coredns.yaml | kubectl apply -f - >/dev/null
	if metrics_server_built; then
		metrics_server_manifest | kubectl apply -f - >/dev/null
	else
		log "metrics-server is not built yet: \`node.sh metrics-server\` adds it later"
	fi
	trap 'if (($? != 0)); then addon_diagnostics; fi' EXIT
	wait_for "CoreDNS Ready" 120 kubelet coredns_ready
	if metrics_server_built; then
		wait_for "the metrics API (metrics-server)" 120 kubelet metrics_api_available
	fi
	for name in "${NODE_COMPONENTS[@]}"; do
		[[ -n $(component_pid "$name") ]] || die "$name exited (log: $LOGS/$name.log)"
	done
}

# ensure-up: the node of a control plane started with QSYS_REAL_NODE=lazy (or
# =1): started unless it already runs.
cmd_ensure_up() {
	local name running=0
	for name in "${NODE_COMPONENTS[@]}"; do
		if [[ -n $(component_pid "$name") ]]; then running=$((running + 1)); fi
	done
	if ((running == ${#NODE_COMPONENTS[@]})) && node_ready; then
		log "real node $NODE_NAME already running; reusing it"
		return 0
	fi
	((running == 0)) || die "the real node runs partly (${running} of ${#NODE_COMPONENTS[@]} processes): 'make cluster-down' and start again"
	[[ -f $RECORD/.complete ]] || die "the control plane was started without the real node (QSYS_REAL_NODE=0): 'make cluster-down' and start it again"
	cmd_up
}

# --- teardown ------------------------------------------------------------

stop_component() { # NAME: TERM, wait up to 10 s, then KILL
	local name=$1 pids
	mapfile -t pids < <(all_our_pids "$name")
	((${#pids[@]})) || return 0
	kill -TERM "${pids[@]}" 2>/dev/null || true
	for _ in $(seq 1 50); do
		mapfile -t pids < <(all_our_pids "$name")
		((${#pids[@]})) || return 0
		sleep 0.2
	done
	log "killing $name (${pids[*]}): ignored SIGTERM"
	kill -KILL "${pids[@]}" 2>/dev/null || true
	sleep 0.3
}

# Processes in the node's pod cgroups (containers, whatever started them).
pod_pids() {
	find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u
	return 0
}
# containerd shims serving our containerd.
shim_pids() {
	local dir args=()
	for dir in /proc/[0-9]*; do
		{ mapfile -d '' -t args <"$dir/cmdline"; } 2>/dev/null || continue
		[[ ${args[0]:-} == */containerd-shim* && ${args[*]} == *"$NODE"* ]] && echo "${dir#/proc/}"
	done
	return 0
}

remove_containers() {
	if [[ -S $CONTAINERD_SOCK ]] && ctr version >/dev/null 2>&1; then
		local ids id
		mapfile -t ids < <(ctr tasks ls -q 2>/dev/null)
		for id in "${ids[@]}"; do ctr tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
		for id in "${ids[@]}"; do ctr tasks delete -f "$id" >/dev/null 2>&1 || true; done
		mapfile -t ids < <(ctr containers ls -q 2>/dev/null)
		for id in "${ids[@]}"; do ctr containers delete "$id" >/dev/null 2>&1 || true; done
	fi
}

kill_leftovers() {
	local pids
	for _ in $(seq 1 25); do
		mapfile -t pids < <({ pod_pids; shim_pids; } | sort -u)
		((${#pids[@]})) || return 0
		kill -KILL "${pids[@]}" 2>/dev/null || true
		sleep 0.2
	done
	log "processes of the real node's pods would not die: ${pids[*]}"
	return 1
}

unmount_all() {
	local m
	for _ in 1 2 3; do
		mapfile -t mounts < <(node_mounts)
		((${#mounts[@]})) || return 0
		for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
	done
	mapfile -t mounts < <(node_mounts)
	((${#mounts[@]} == 0)) || {
		log "could not unmount: ${mounts[*]}"
		return 1
	}
}

remove_cgroups() {
	local top
	for top in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
		[[ -d $top ]] || continue
		find "$top" -depth -type d -exec rmdir {} + 2>/dev/null || true
		[[ ! -d $top ]] || {
			log "could not remove the cgroup $top"
			return 1
		}
	done
}

# Rules and chains of kubelet, kube-proxy, kube-router and CNI, for each
# iptables front end; then the nftables tables that did not exist before.
remove_rules() {
	local ipt table chain rules
	for ipt in iptables ip6tables; do
		command -v "$ipt" >/dev/null || continue
		for table in filter nat mangle raw; do
			rules=$("$ipt-save" -t "$table" 2>/dev/null) || continue
			# Jumps from any chain to ours, then our chains themselves.
			while read -r line; do
				eval "$ipt -w -t $table ${line/-A /-D }" 2>/dev/null || true
			done < <(grep -E '^-A .* -j (KUBE-|CNI-)' <<<"$rules" | grep -Ev '^-A (KUBE-|CNI-)')
			while read -r chain; do
				"$ipt" -w -t "$table" -F "$chain" 2>/dev/null || true
			done < <(grep -E '^:(KUBE-|CNI-)' <<<"$rules" | cut -d' ' -f1 | tr -d :)
			while read -r chain; do
				"$ipt" -w -t "$table" -X "$chain" 2>/dev/null || true
			done < <(grep -E '^:(KUBE-|CNI-)' <<<"$rules" | cut -d' ' -f1 | tr -d :)
		done
	done
	# Without a record nothing tells what was there before: leave tables and sets.
	[[ -f $RECORD/.complete ]] || return 0
	local before words
	before=$(cat "$RECORD/nft-tables")
	while read -r table; do
		[[ -n $table ]] || continue
		grep -qxF "$table" <<<"$before" && continue
		read -r -a words <<<"$table"
		nft delete "${words[@]}" 2>/dev/null || true
	done < <(nft_tables)
	while read -r set; do
		[[ -n $set ]] || continue
		grep -qxF "$set" "$RECORD/ipsets" 2>/dev/null || ipset destroy "$set" 2>/dev/null || true
	done < <(ipset list -n 2>/dev/null)
}

remove_links() {
	local link
	[[ -f $RECORD/.complete ]] || {
		ip link delete "$BRIDGE" 2>/dev/null || true
		return 0
	}
	while read -r link; do
		[[ -n $link ]] || continue
		grep -qxF "$link" "$RECORD/links" 2>/dev/null && continue
		[[ $link == "$BRIDGE" || $link == veth* ]] && ip link delete "$link" 2>/dev/null || true
	done < <(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1)
	while read -r ns; do
		[[ -n $ns ]] || continue
		grep -qxF "$ns" "$RECORD/netns" 2>/dev/null || ip netns delete "$ns" 2>/dev/null || true
	done < <(ip netns list | awk '{print $1}')
	if ip link show "$BRIDGE" >/dev/null 2>&1 && ! grep -qxF "$BRIDGE" "$RECORD/links" 2>/dev/null; then
		log "could not delete the bridge $BRIDGE"
		return 1
	fi
}

restore_sysctls() {
	[[ -f $RECORD/.complete ]] || return 0
	local key value
	while IFS= read -r line; do
		key=${line%% = *} value=${line#* = }
		sysctl -qw "$key=$value" >/dev/null 2>&1 || log "could not restore sysctl $key"
	done < <(comm -23 "$RECORD/sysctl" <(sysctls) | grep ' = ')
}

remove_paths() {
	local path m
	[[ -f $RECORD/.complete ]] || return 0
	for path in "${FIXED_PATHS[@]}"; do
		[[ -e $path || -L $path ]] || continue
		grep -qxF "$path" "$RECORD/paths" 2>/dev/null && continue
		m=$(awk -v p="$path" '$5 == p || index($5, p "/") == 1 {print $5}' /proc/self/mountinfo)
		[[ -z $m ]] || die "not removing $path: still mounted: $m"
		rm -rf "$path"
	done
}

remove_conntrack() {
	command -v conntrack >/dev/null || return 0
	conntrack -D -s 198.18.0.0/15 >/dev/null 2>&1 || true
	conntrack -D -d 198.18.0.0/15 >/dev/null 2>&1 || true
}

cmd_down() {
	if [[ -f $OWNER && $(cat "$OWNER") != "$STATE" ]]; then
		log "the real node belongs to $(cat "$OWNER"); not touching it"
		return 0
	fi
	local step pass failed
	# Best effort, step after step (a failing step must not leave the rest
	# undone); die stops only where going on would be unsafe. Every step is
	# idempotent, so a pass with a failure is run again (a killed pod's processes
	# can hold its cgroup or mounts for a moment).
	for pass in 1 2 3; do
		failed=0
		for step in "stop_component kubelet" "stop_component kube-proxy" "stop_component kube-router" \
			remove_containers "stop_component containerd" kill_leftovers unmount_all remove_cgroups \
			remove_rules remove_links remove_conntrack restore_sysctls remove_paths; do
			$step || {
				log "teardown: '$step' failed; going on"
				failed=1
			}
		done
		((failed == 1 && pass < 3)) || break
		log "teardown pass $pass incomplete; once more in 2 s"
		sleep 2
	done
	[[ -z $(node_mounts) ]] || die "still mounted under the node's directories: $(node_mounts | tr '\n' ' ')"
	# containerd's root (the imported images, no container) is kept for the
	# next start; everything else of the node goes.
	find "$NODE" -mindepth 1 -maxdepth 1 ! -name containerd -exec rm -rf {} + 2>/dev/null || true
	find "$NODE/containerd" -mindepth 1 -maxdepth 1 ! -name root -exec rm -rf {} + 2>/dev/null || true
	# The record stays until a teardown has gone through without a failure.
	((failed == 0)) || die "teardown incomplete; run it again (hack/cluster/node.sh down)"
	rm -rf "$RECORD"
	rm -f "$OWNER"
}

# The host state a real node touches, for the teardown test to compare.
cmd_snapshot() {
	echo "## sysctl"
	sysctls
	echo "## iptables"
	{ iptables-save; ip6tables-save; } 2>/dev/null | grep -Ev '^#' | sed -E 's/\[[0-9]+:[0-9]+\]//' || true
	echo "## nft tables"
	nft_tables
	echo "## ipsets"
	ipset list -n 2>/dev/null | sort || true
	echo "## links"
	ip -o link show | awk -F': ' '{print $2}' | sort
	echo "## addresses"
	ip -o addr show | awk '{print $2, $3, $4}' | sort
	echo "## routes"
	ip route show table all | sort
	echo "## netns"
	ip netns list | sort
	echo "## mounts"
	# Ours, and every overlay or namespace mount (others' bind mounts, such as an
	# image build's chroot, come and go).
	awk -v node="$NODE" '$5 ~ "^(/run/containerd|/var/lib/kubelet|/run/netns|/var/run/netns)" ||
		index($5, node) == 1 || $9 ~ /^(overlay|nsfs|shm)$/ {print $5, $9}' /proc/self/mountinfo | sort
	echo "## cgroups"
	find /sys/fs/cgroup -mindepth 1 -maxdepth 2 -type d | sort
	echo "## paths"
	local path
	for path in "${FIXED_PATHS[@]}"; do if [[ -e $path ]]; then echo "$path"; fi; done
	echo "## processes"
	ps -eo comm= | grep -E '^(containerd|containerd-shim|runc|kubelet|kube-proxy|kube-router|coredns|metrics-server|pause)' | sort || true
}

# containerd reads the hosts directory on every pull: a registry started later (the
# release test's) is trusted without a restart. Only loopback registries; the
# files live under $NODE, which down removes.
registry_dir() {
	[[ ${1:-} =~ ^127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}:[0-9]{1,5}$ ]] ||
		die "registry: expected a loopback HOST:PORT, got '${1:-}'"
	echo "$NODE/certs.d/$1"
}

cmd_registry_trust() {
	local dir
	dir=$(registry_dir "${1:-}")
	[[ -f ${2:-} ]] || die "registry-trust: no CA file '${2:-}'"
	mkdir -p "$dir"
	cp "$2" "$dir/ca.crt"
	cat >"$dir/hosts.toml" <<-EOF
		server = "https://$1"
		[host."https://$1"]
		  capabilities = ["pull", "resolve"]
		  ca = "$dir/ca.crt"
	EOF
}

# metrics-server on a node that started before its group was built (a no-op when the
# metrics API answers already).
cmd_metrics_server() {
	require_root
	metrics_server_built || die "$METRICS_SERVER_BIN/metrics-server is missing: run 'make cluster-tools'"
	node_ready || die "the real node is not running: start it first (node.sh ensure-up)"
	metrics_api_available && return 0
	import_binary_images
	metrics_server_manifest | kubectl apply -f - >/dev/null
	trap 'if (($? != 0)); then addon_diagnostics; fi' EXIT
	wait_for "the metrics API (metrics-server)" 120 kubelet metrics_api_available
}

cmd_registry_untrust() {
	local dir
	dir=$(registry_dir "${1:-}")
	rm -rf "$dir"
}

case ${1:-} in
record) cmd_record ;;
registry-trust) cmd_registry_trust "${2:-}" "${3:-}" ;;
registry-untrust) cmd_registry_untrust "${2:-}" ;;
net-up) cmd_net_up ;;
up) cmd_up ;;
ensure-up) cmd_ensure_up ;;
import-images) cmd_import_images && import_binary_images ;;
metrics-server) cmd_metrics_server ;;
down) cmd_down ;;
snapshot) cmd_snapshot ;;
*) die "usage: node.sh record|net-up|up|ensure-up|import-images|metrics-server|down|snapshot|registry-trust|registry-untrust" ;;
esac
