#!/usr/bin/env bash
# Starts the local control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok as fake kubelet) on 127.0.0.1 and writes the admin
# kubeconfig to $STATE/kubeconfig. Prints "reused" on stdout when a healthy
# control plane of this checkout was already running, "started" otherwise;
# progress goes to stderr.
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "$0")/lib.sh"

for name in "${COMPONENTS[@]}"; do
	[[ -x $KUBE_BIN/$name ]] || die "$KUBE_BIN/$name is missing: run 'make cluster-tools' first"
done

running=0
for name in "${COMPONENTS[@]}"; do
	if [[ -n $(component_pid "$name") ]]; then running=$((running + 1)); fi
done
if ((running == ${#COMPONENTS[@]})) && [[ -f $KUBECONFIG_OUT ]] && readyz; then
	log "already running at $APISERVER_URL; reusing it (kubeconfig: $KUBECONFIG_OUT)"
	echo reused
	exit 0
fi
if [[ -n $(all_our_pids) ]]; then
	log "found a partly running control plane; stopping it first"
	bash "$REPO/hack/cluster/down.sh"
fi

for port in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$CONTROLLER_MANAGER_PORT" \
	"$SCHEDULER_PORT" "$KWOK_PORT"; do
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
for user in kube-controller-manager kube-scheduler kwok; do
	kubeconfig "$STATE/$user.kubeconfig" "$user"
done

start() {
	local name=$1
	shift
	# setsid: a Ctrl-C in the terminal that ran this script must not reach the
	# components; down.sh stops them.
	setsid "$KUBE_BIN/$name" "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
	echo $! >"$PIDS/$name.pid"
}

# wait_for WHAT SECONDS COMPONENT CMD...: poll CMD until it succeeds, failing
# early (with the log's tail) when COMPONENT exits.
wait_for() {
	local what=$1 timeout=$2 name=$3 deadline
	shift 3
	deadline=$(($(date +%s) + timeout))
	until "$@"; do
		if [[ -z $(component_pid "$name") ]]; then
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
	--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
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
	--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
	--service-account-issuer=https://kubernetes.default.svc.cluster.local \
	--service-account-key-file="$PKI/sa.pub" \
	--service-account-signing-key-file="$PKI/sa.key" \
	--service-cluster-ip-range="$SERVICE_CIDR" \
	--endpoint-reconciler-type=none \
	--allow-privileged=true --profiling=false
wait_for "kube-apiserver /readyz" 60 kube-apiserver readyz
log "kube-apiserver /readyz ok after $(elapsed)s"

start kube-controller-manager \
	--kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
	--authentication-kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
	--authorization-kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
	--bind-address=127.0.0.1 --secure-port="$CONTROLLER_MANAGER_PORT" \
	--leader-elect=false --controllers='*' --use-service-account-credentials=true \
	--service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
	--cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
	--cluster-name=qsys-local --allocate-node-cidrs=false --profiling=false

cat >"$STATE/kube-scheduler.yaml" <<SCHED
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $STATE/kube-scheduler.kubeconfig
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

cp "$STATE/admin.kubeconfig" "$KUBECONFIG_OUT.tmp"
mv "$KUBECONFIG_OUT.tmp" "$KUBECONFIG_OUT"
log "ready after $(elapsed)s: export KUBECONFIG=$KUBECONFIG_OUT"
echo started
