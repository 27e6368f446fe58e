# Local Kubernetes control plane built from source, and the kind path.
# See docs/testing.md. Binaries: $(QSYS_TOOLS_CACHE)/GROUP-VERSION-KEY/bin.

# Pinned tool groups built for `make test` (hack/tools/GROUP), one after the other in the
# background while tests run, in the order the tests need them: `kube` (both control
# planes: the e2e tests on kwok's nodes start once it is built), `helm` (the chart, in most
# e2e tests), the real node's groups (NODE_TOOL_GROUPS; the tests on the real node wait for
# them), then the groups of later tests. A test waits for the groups of its
# `@pytest.mark.tools(...)` marks, an e2e test also for `kube` and, when it uses the real
# node, NODE_TOOL_GROUPS (tests/conftest.py); the tests run in this order too. Add a new
# group where the first test that needs it should start. `cosign` comes last of the
# real-node tests' groups: test_release_registry.py's pulls from its registry leave the
# node's containerd 1.6 answering ErrImageNeverPull for the imported images, so it runs
# after every other test on the real node (it is also marked `node_last`: the other
# lane's files end first; test_helm_upgrade.py says more).
# metrics-server is not among them: the node starts without it, and the tests that need
# the metrics API (marked tools("metrics-server")) add it (`node.sh metrics-server`).
NODE_TOOL_GROUPS ?= node coredns kube-router
# Only the side run needs these: the kind smoke test's node image (kubeadm; prepared
# beside the main run) and the floor run (kube-floor; its tests wait for it). Then the
# groups of a few short unit and integration tests, so that a cold run's last build has
# the least after it.
LATE_TOOL_GROUPS ?= kind kubeadm kube-floor
TOOL_GROUPS ?= kube helm $(NODE_TOOL_GROUPS) metrics-server prometheus prometheus-operator registry kstatus \
	argocd cosign $(LATE_TOOL_GROUPS) promtool krew otelcol
# What the local cluster with its real node and the chart need (`make cluster-up`, `make demo`).
CLUSTER_TOOL_GROUPS ?= kube helm $(NODE_TOOL_GROUPS) metrics-server
KIND_CLUSTER ?= qsys-e2e
KIND_KUBECONFIG := .cache/kind/kubeconfig
# What the kind path needs besides Docker: kind, and kubectl and helm for the tests.
KIND_TOOL_GROUPS ?= kind kube helm

tool_dir = $(shell bash hack/tools/build.sh --dir $(1))

.PHONY: cluster-tools cluster-up-tools cluster-up cluster-down cluster-env e2e kind-deps kind-node-image kind-up kind-down kind-images e2e-kind kind-smoke

cluster-tools:
	@bash hack/tools/build.sh $(TOOL_GROUPS)

cluster-up-tools:
	@bash hack/tools/build.sh $(CLUSTER_TOOL_GROUPS)

cluster-up: cluster-up-tools images
	@bash hack/cluster/up.sh >/dev/null

# Every plane of this checkout (hack/cluster/lib.sh): main (and its real node), kwok, floor.
CLUSTER_PLANES := main kwok floor

cluster-down:
	@for plane in $(CLUSTER_PLANES); do QSYS_CLUSTER_PLANE=$$plane bash hack/cluster/down.sh || exit 1; done

# eval "$$(make -s cluster-env)": kubectl, helm and the kubeconfig in this shell.
cluster-env:
	@echo 'export KUBECONFIG=$(CURDIR)/.cache/cluster/kubeconfig'
	@echo 'export PATH=$(call tool_dir,kube):$(call tool_dir,helm):$$PATH'

# The e2e suite alone; brings the local control plane up (and down) unless
# KUBECONFIG is set.
e2e: install cluster-tools images
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

# --- kind (Docker) ---------------------------------------------------------
# Machine-wide like the local cluster: run these under `flock /tmp/qsys-cluster.lock`
# and never beside the local cluster's real node (docs/testing.md, "kind").
KIND_PY = PYTHON=$(CURDIR)/$(BIN)/python

# Debian's docker.io, installed without starting it (hack/kind/docker.sh starts its own).
kind-deps:
	@bash hack/kind/install-docker.sh

# The node image from the pinned binaries and the image builder (hack/kind_node.py).
kind-node-image: install
	@nice -n 10 $(BIN)/python hack/kind_node.py build >/dev/null

kind-up: install kind-deps kind-node-image
	@$(KIND_PY) bash hack/kind/cluster.sh up >/dev/null
	@echo "kind-up: export KUBECONFIG=$(CURDIR)/$(KIND_KUBECONFIG)"

# The tarballs of the one image builder (hack/images.py), loaded into every node.
kind-images: images kind-up
	@$(KIND_PY) bash hack/kind/cluster.sh load

# The e2e suite on kind: the tests portable to any cluster (not marked local_cluster).
# Builds only KIND_TOOL_GROUPS; a test that needs another pinned tool (the registry,
# Argo CD, ...) fails and names it.
e2e-kind: install kind-images
	@bash hack/tools/build.sh $(KIND_TOOL_GROUPS)
	KUBECONFIG=$(CURDIR)/$(KIND_KUBECONFIG) $(BIN)/python -m pytest tests/e2e -m 'not local_cluster' $(PYTEST_ARGS)

# The kind smoke test (tests/kind): creates and deletes its own cluster. `make test`
# runs it last, once the local cluster (and its real node) is down.
kind-smoke: install kind-deps kind-node-image images
	@bash hack/tools/build.sh $(KIND_TOOL_GROUPS)
	$(BIN)/python -m pytest -m kind tests/kind $(PYTEST_ARGS)

kind-down:
	@$(KIND_PY) bash hack/kind/cluster.sh down
