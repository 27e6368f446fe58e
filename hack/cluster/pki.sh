#!/usr/bin/env bash
# Generates the control plane's CA, serving and client certificates and the
# service-account signing key into DIR, unless DIR already holds a full set.
set -euo pipefail
dir=$1
# Bump the marker's number when this script adds files, so old sets are redone.
[[ -f $dir/.complete.4 ]] && exit 0
rm -rf "$dir"
mkdir -p "$dir"
cd "$dir"

ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# ca NAME COMMON_NAME
ca() {
	ec_key "$1.key"
	openssl req -x509 -new -key "$1.key" -days 3650 -subj "/CN=$2" -out "$1.crt" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
}
ca ca qsys-local-ca
# The aggregation layer's own CA: the API server proves with
# front-proxy-client that it forwards on behalf of an authenticated user.
ca front-proxy-ca qsys-local-front-proxy-ca

# leaf NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES] [CA]
leaf() {
	local ca=${5:-ca}
	ec_key "$1.key"
	openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
	{
		echo "basicConstraints=critical,CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$3"
		if [[ -n ${4:-} ]]; then echo "subjectAltName=$4"; fi
	} >"$1.ext"
	openssl x509 -req -in "$1.csr" -CA "$ca.crt" -CAkey "$ca.key" -set_serial "0x$(openssl rand -hex 16)" \
		-days 3650 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
	rm -f "$1.csr" "$1.ext"
}

# 198.18.0.1: the real node's bridge address, where the apiserver listens when
# the node runs; 198.19.0.1: the first address of the Service range, the
# "kubernetes" Service's ClusterIP (hack/cluster/lib.sh).
leaf apiserver "/CN=kube-apiserver" serverAuth \
	"IP:127.0.0.1,DNS:localhost,IP:198.18.0.1,IP:198.19.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
leaf admin "/O=system:masters/CN=qsys-admin" clientAuth
leaf kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
leaf kube-scheduler "/CN=system:kube-scheduler" clientAuth
# kwok plays every kubelet (node and pod status of all fake nodes), which the
# Node authorizer's per-node identities cannot express.
leaf kwok "/O=system:masters/CN=kwok" clientAuth
# The real node (hack/cluster/node.sh): the kubelet's identity under the Node
# authorizer, the apiserver's client certificate for the kubelet's API,
# kube-proxy's default identity (bound to system:node-proxier), and one
# cluster-admin identity for the node's add-ons (CoreDNS, kube-router).
leaf kubelet "/O=system:nodes/CN=system:node:qsys-node" clientAuth
leaf apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
leaf kube-proxy "/CN=system:kube-proxy" clientAuth
leaf node-addons "/O=system:masters/CN=qsys-node-addons" clientAuth
leaf front-proxy-client "/CN=front-proxy-client" clientAuth "" front-proxy-ca
# Serving certificates from the cluster CA, so that clients verify them: the
# kubelet's API (metrics-server scrapes it at the node's InternalIP) and
# metrics-server's aggregated API (the apiserver dials its Service by name).
leaf kubelet-serving "/O=system:nodes/CN=system:node:qsys-node" serverAuth "IP:198.18.0.1,DNS:qsys-node"
leaf metrics-server "/CN=metrics-server.kube-system.svc" serverAuth \
	"DNS:metrics-server.kube-system.svc,DNS:metrics-server.kube-system.svc.cluster.local"

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
openssl pkey -in sa.key -pubout -out sa.pub
chmod 600 ./*.key
touch .complete.4
