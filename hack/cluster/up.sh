#!/usr/bin/env bash
# Starts the local control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok as fake kubelet) on 127.0.0.1, and the real node
# (hack/cluster/node.sh; not with QSYS_REAL_NODE=0, later with =lazy), and writes the admin
# kubeconfig to $STATE/kubeconfig. Prints "reused" on stdout when a healthy
# control plane of this checkout was already running, "started" otherwise;
# progress goes to stderr.
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "$0")/lib.sh"

for name in "${COMPONENTS[@]}"; do
	[[ -x $(bin_path "$name") ]] || die "$(bin_path "$name") is missing: run 'make cluster-tools' first"
done
if [[ $KUBE_GROUP != kube && $REAL_NODE == 1 ]]; then
	die "QSYS_KUBE_GROUP=$KUBE_GROUP runs without the real node (its kubelet is newer than that API server): set QSYS_REAL_NODE=0"
fi

wanted=("${COMPONENTS[@]}")
if [[ $REAL_NODE == 1 ]]; then wanted+=("${NODE_COMPONENTS[@]}"); fi
running=0
for name in "${wanted[@]}"; do
	if [[ -n $(component_pid "$name") ]]; then running=$((running + 1)); fi
done
if ((running == ${#wanted[@]})) && [[ -f $KUBECONFIG_OUT ]] && readyz; then
	log "already running at $APISERVER_URL; reusing it (kubeconfig: $KUBECONFIG_OUT)"
	echo reused
	exit 0
fi
if [[ -n $(all_our_pids) ]]; then
	log "found a partly running control plane; stopping it first"
	bash "$REPO/hack/cluster/down.sh"
fi

for port in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$CONTROLLER_MANAGER_PORT" \
	"$SCHEDULER_PORT" "$KWOK_PORT" "$KUBELET_HEALTHZ_PORT" "$KUBE_PROXY_HEALTHZ_PORT" "$KUBE_PROXY_METRICS_PORT"; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		die "127.0.0.1:$port is already in use by another program; set the QSYS_*_PORT variables (see hack/cluster/lib.sh)"
	fi
done

# Whatever fails from here on, stop what this run started.
trap 'if (($? != 0)); then log "start failed; stopping"; bash "$REPO/hack/cluster/down.sh" || true; fi' EXIT

t0=$(date +%s%N)
elapsed() {
	local ms=$((($(date +%s%N) - t0) / 1000000))
	printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

rm -rf "$STATE/etcd" "$LOGS" "$PIDS" "$KUBECONFIG_OUT"
mkdir -p "$STATE" "$LOGS" "$PIDS"
bash "$REPO/hack/cluster/pki.sh" "$PKI"
if [[ $REAL_NODE != 0 ]]; then
	# Host state first, before anything changes it; then the bridge whose
	# address the apiserver binds.
	bash "$REPO/hack/cluster/node.sh" record
	bash "$REPO/hack/fence.sh" up "$FENCE_METRIC"
	bash "$REPO/hack/cluster/node.sh" net-up
	endpoint_reconciler=lease
else
	endpoint_reconciler=none
fi

for user in kube-controller-manager kube-scheduler kwok; do
	kubeconfig "$STATE/$user.kubeconfig" "$user"
done

start etcd \
	--name=qsys --data-dir="$STATE/etcd" \
	--listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
	--advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
	--listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
	--initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
	--initial-cluster="qsys=http://127.0.0.1:$ETCD_PEER_PORT" \
	--unsafe-no-fsync --log-level=warn
wait_for "etcd" 30 etcd curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$ETCD_PORT/health"

start kube-apiserver \
	--bind-address="$APISERVER_HOST" --advertise-address="$APISERVER_HOST" --secure-port="$APISERVER_PORT" \
	--etcd-servers="http://127.0.0.1:$ETCD_PORT" \
	--tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
	--client-ca-file="$PKI/ca.crt" \
	--requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
	--requestheader-allowed-names=front-proxy-client \
	--requestheader-username-headers=X-Remote-User \
	--requestheader-group-headers=X-Remote-Group \
	--requestheader-extra-headers-prefix=X-Remote-Extra- \
	--proxy-client-cert-file="$PKI/front-proxy-client.crt" \
	--proxy-client-key-file="$PKI/front-proxy-client.key" \
	--kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
	--kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
	--kubelet-preferred-address-types=InternalIP \
	--authorization-mode=Node,RBAC \
	--enable-admission-plugins=NodeRestriction,PodNodeSelector,PodTolerationRestriction \
	--service-account-issuer=https://kubernetes.default.svc.cluster.local \
	--service-account-key-file="$PKI/sa.pub" \
	--service-account-signing-key-file="$PKI/sa.key" \
	--service-cluster-ip-range="$SERVICE_CIDR" \
	--endpoint-reconciler-type="$endpoint_reconciler" \
	--allow-privileged=true --profiling=false
wait_for "kube-apiserver /readyz" 60 kube-apiserver readyz
log "kube-apiserver /readyz ok after $(elapsed)s"

# Short HPA timings (defaults 15s and 5m) so that a scale-out and back in
# fits in an e2e test; see docs/autoscaling.md.
start kube-controller-manager \
	--kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
	--authentication-kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
	--authorization-kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
	--bind-address=127.0.0.1 --secure-port="$CONTROLLER_MANAGER_PORT" \
	--leader-elect=false --controllers='*' --use-service-account-credentials=true \
	--service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
	--cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
	--cluster-name=qsys-local --allocate-node-cidrs=false --profiling=false \
	--horizontal-pod-autoscaler-sync-period=5s \
	--horizontal-pod-autoscaler-downscale-stabilization=30s \
	--kube-api-qps="$CONTROLLER_MANAGER_QPS" --kube-api-burst="$((CONTROLLER_MANAGER_QPS * 3 / 2))" \
	--concurrent-deployment-syncs="$CONTROLLER_MANAGER_SYNCS" \
	--concurrent-replicaset-syncs="$CONTROLLER_MANAGER_SYNCS"

cat >"$STATE/kube-scheduler.yaml" <<SCHED
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $STATE/kube-scheduler.kubeconfig
  qps: $SCHEDULER_QPS
  burst: $((SCHEDULER_QPS * 2))
leaderElection:
  leaderElect: false
SCHED
start kube-scheduler \
	--config="$STATE/kube-scheduler.yaml" \
	--authentication-kubeconfig="$STATE/kube-scheduler.kubeconfig" \
	--authorization-kubeconfig="$STATE/kube-scheduler.kubeconfig" \
	--bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --profiling=false

start kwok \
	--kubeconfig="$STATE/kwok.kubeconfig" --config="$REPO/hack/cluster/kwok.yaml" \
	--manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
	--node-ip=127.0.0.1 --cidr="$POD_CIDR" --node-lease-duration-seconds=40 \
	--server-address="127.0.0.1:$KWOK_PORT"

kubeconfig "$STATE/admin.kubeconfig" admin
kubectl() { "$KUBE_BIN/kubectl" --kubeconfig="$STATE/admin.kubeconfig" "$@"; }
for i in $(seq 0 $((FAKE_NODES - 1))); do
	cat <<NODE
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
---
NODE
done | kubectl apply -f - >/dev/null

all_nodes_ready() {
	local ready
	ready=$(kubectl get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True) || true
	((ready == FAKE_NODES))
}
wait_for "fake nodes Ready" 60 kwok all_nodes_ready
default_service_account() { kubectl get serviceaccount default -n default >/dev/null 2>&1; }
wait_for "the default ServiceAccount" 60 kube-controller-manager default_service_account
for name in "${COMPONENTS[@]}"; do
	[[ -n $(component_pid "$name") ]] || die "$name exited (log: $LOGS/$name.log)"
done
if [[ $REAL_NODE == 1 ]]; then
	bash "$REPO/hack/cluster/node.sh" up
	log "real node $NODE_NAME Ready after $(elapsed)s"
fi

cp "$STATE/admin.kubeconfig" "$KUBECONFIG_OUT.tmp"
mv "$KUBECONFIG_OUT.tmp" "$KUBECONFIG_OUT"
log "ready after $(elapsed)s: export KUBECONFIG=$KUBECONFIG_OUT"
echo started
