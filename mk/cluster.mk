# Local Kubernetes control plane built from source, and the kind path.
# See docs/testing.md. Binaries: $(QSYS_TOOLS_CACHE)/GROUP-VERSION-KEY/bin.

# Pinned tool groups built for `make test` (hack/tools/GROUP); add new ones here, in
# the order the tests need them: `make test` builds them one after the other in the
# background while tests run, and a test waits for the groups it needs
# (tests/conftest.py). The real node's groups come last: only the tests that request
# the `real_node` fixture wait for them; every other e2e test waits for the rest.
NODE_TOOL_GROUPS ?= node metrics-server coredns kube-router
# Only the real-node tests (registry, cosign, kstatus, argocd) and the floor run
# (kube-floor) need these, so the other e2e tests do not wait for them either.
LATE_TOOL_GROUPS ?= registry cosign kstatus argocd kube-floor
TOOL_GROUPS ?= helm promtool krew kube prometheus prometheus-operator otelcol $(NODE_TOOL_GROUPS) $(LATE_TOOL_GROUPS)
# What the local cluster with its real node and the chart need (`make cluster-up`, `make demo`).
CLUSTER_TOOL_GROUPS ?= kube helm $(NODE_TOOL_GROUPS)
KIND_CLUSTER ?= qsys-e2e
KIND_KUBECONFIG := .cache/kind/kubeconfig
IMAGE_TAG ?= e2e
# Images built for kind when their Dockerfile exists (build context: repo root).
IMAGES ?= operator gateway

tool_dir = $(shell bash hack/tools/build.sh --dir $(1))

.PHONY: cluster-tools cluster-up-tools cluster-up cluster-down cluster-env e2e kind-up kind-down kind-images e2e-kind

cluster-tools:
	@bash hack/tools/build.sh $(TOOL_GROUPS)

cluster-up-tools:
	@bash hack/tools/build.sh $(CLUSTER_TOOL_GROUPS)

cluster-up: cluster-up-tools images
	@bash hack/cluster/up.sh >/dev/null

cluster-down:
	@bash hack/cluster/down.sh

# eval "$$(make -s cluster-env)": kubectl, helm and the kubeconfig in this shell.
cluster-env:
	@echo 'export KUBECONFIG=$(CURDIR)/.cache/cluster/kubeconfig'
	@echo 'export PATH=$(call tool_dir,kube):$(call tool_dir,helm):$$PATH'

# The e2e suite alone; brings the local control plane up (and down) unless
# KUBECONFIG is set.
e2e: install cluster-tools images
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

# --- kind (needs a Docker engine) -------------------------------------------
KIND = $(call tool_dir,kind)/kind

kind-up:
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || \
		{ echo "kind-up: needs a running Docker engine" >&2; exit 1; }
	@bash hack/tools/build.sh kind
	@$(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' || \
		$(KIND) create cluster --name '$(KIND_CLUSTER)' --config kind-config.yaml --wait 180s
	@mkdir -p $(dir $(KIND_KUBECONFIG))
	@$(KIND) get kubeconfig --name '$(KIND_CLUSTER)' >$(KIND_KUBECONFIG)
	@echo "kind-up: export KUBECONFIG=$(CURDIR)/$(KIND_KUBECONFIG)"

kind-images: kind-up
	@for name in $(IMAGES); do \
		if [ -f $$name/Dockerfile ]; then \
			docker build -t qsys-$$name:$(IMAGE_TAG) -f $$name/Dockerfile . && \
			$(KIND) load docker-image --name '$(KIND_CLUSTER)' qsys-$$name:$(IMAGE_TAG) || exit 1; \
		else echo "kind-images: no $$name/Dockerfile yet; skipped"; fi; \
	done

e2e-kind: install kind-images cluster-tools
	KUBECONFIG=$(CURDIR)/$(KIND_KUBECONFIG) QSYS_IMAGE_TAG=$(IMAGE_TAG) \
		$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

kind-down:
	@bash hack/tools/build.sh kind
	@$(KIND) delete cluster --name '$(KIND_CLUSTER)'
	@rm -f $(KIND_KUBECONFIG)
