# qsys-operator — developer entry points. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Built tools (Kubernetes binaries, helm, ...) live outside the clone so that
# fresh clones on the same machine reuse them.
export QSYS_TOOLS_CACHE ?= $(HOME)/.cache/qsys-operator
# uv installs the virtualenv (pip took 32 s of a warm `make test`, uv 9 s); itself
# installed once by pip, pinned, into the tool cache. Its package cache is uv's own
# (~/.cache/uv).
# The version pyproject.toml's dev extra pins (one place).
UV_VERSION := $(shell sed -n 's/^ *"uv==\(.*\)",$$/\1/p' pyproject.toml)
ifeq ($(UV_VERSION),)
$(error pyproject.toml's dev extra pins no "uv==VERSION", which `make install` needs)
endif
UV_DIR := $(QSYS_TOOLS_CACHE)/uv-$(UV_VERSION)
UV := $(UV_DIR)/bin/uv
# mypy's caches outside the clone: it checks a cached module by its source's hash when
# the path or mtime differ, so a fresh clone reuses them (15 s → 0.5 s for the packages).
MYPY_CACHE := $(QSYS_TOOLS_CACHE)/mypy
PYTEST_ARGS ?=
# pytest-xdist workers of `make test`: kwok-only e2e, three real-node lanes, the rest (docs/testing.md).
PYTEST_WORKERS ?= 5

.PHONY: help install system-deps pycache test lint unit bench demo clean e2e-floor

help:
	@echo "make install   virtualenv (.venv) with every entry point, and system packages"
	@echo "make unit      the unit tests that need no built tool (about a minute on a fresh machine)"
	@echo "make test      lint + the whole test suite (what CI runs)"
	@echo "make demo      cluster with a real node, operator, simulator, gateway pods: an allowed and a denied call (KEEP=1 leaves it running)"
	@echo "make lint      ruff + mypy"
	@echo "make bench     benchmarks, printed beside their baselines"
	@echo "make images    operator, gateway, Core simulator and pause images, without Docker"
	@echo "make release REGISTRY=host[:port]/path COSIGN_KEY=cosign.key   multi-arch images, SBOMs, chart: pushed and signed"
	@echo "make cluster-up / cluster-down   local Kubernetes control plane built from source"
	@echo "make e2e-floor the e2e tests marked floor against the oldest supported Kubernetes (1.31)"
	@echo "make kind-up / e2e-kind          the e2e tests portable to any cluster (not local_cluster) on kind (needs Docker)"

install: $(STAMP)

# Debian packages (hack/install-system-deps.sh): quick when nothing is missing.
system-deps:
	@bash hack/install-system-deps.sh

# pip of a throw-away venv (the interpreter's own pip may be missing, as on Debian).
$(UV):
	tmp=$(UV_DIR).tmp$$$$ && rm -rf $$tmp && $(PYTHON) -m venv $$tmp/venv && \
		$$tmp/venv/bin/python -m pip install --quiet --disable-pip-version-check \
			--target $$tmp/uv uv==$(UV_VERSION) && \
		{ mv -T $$tmp/uv $(UV_DIR) 2>/dev/null || true; } && rm -rf $$tmp
	test -x $(UV)

# --compile-bytecode as pip did: with PYTHONDONTWRITEBYTECODE set, every process would
# otherwise compile the site-packages it imports.
$(STAMP): pyproject.toml plugin/pyproject.toml hack/install-system-deps.sh | system-deps $(UV)
	test -x $(BIN)/python || $(UV) venv --quiet --seed --python $(PYTHON) $(VENV)
	$(UV) pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]' -e ./plugin
	touch $(STAMP)

lint: install
	$(BIN)/ruff check protocol gateway operator simulator plugin testkit tests bench hack
	$(BIN)/ruff format --check protocol gateway operator simulator plugin testkit tests bench hack
	$(BIN)/mypy --cache-dir $(MYPY_CACHE)/main
	@bash hack/tools/build.sh actionlint
	$$(bash hack/tools/build.sh --dir actionlint)/actionlint .github/workflows/*.yaml
	$(BIN)/mypy --explicit-package-bases --cache-dir $(MYPY_CACHE)/scripts tests/conftest.py bench hack/*.py
	@# Tests import their directory's helpers by bare name (pytest puts each test directory
	@# on sys.path) and the directories share basenames (conftest.py): one run per directory.
	for dir in unit integration e2e; do \
		MYPYPATH=tests/$$dir $(BIN)/mypy --explicit-package-bases \
			--cache-dir $(MYPY_CACHE)/tests-$$dir tests/$$dir || exit 1; \
	done
	@# The kind smoke test imports the e2e suite's helpers.
	MYPYPATH=tests/e2e $(BIN)/mypy --explicit-package-bases --cache-dir $(MYPY_CACHE)/tests-kind tests/kind

# What `make test` runs beside the tool builds before pytest starts (hack/test.sh); mk/*.mk
# add theirs. TEST_CHECKS run beside pytest (they need install) and fail `make test` at its end.
TEST_PREREQS := install js-deps mcp-inspector pycache
TEST_CHECKS := lint

# The test modules compiled and assertion-rewritten once, beside the images, so that
# the xdist workers read them instead of each rewriting all (7.6 s → 2.6 s of CPU a
# worker): a collection with bytecode writing on whatever PYTHONDONTWRITEBYTECODE says.
pycache: install
	@PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest --collect-only -q -p no:cacheprovider tests >/dev/null

# The tool groups (mk/cluster.mk) build in the background from the start; pytest runs
# the kwok-only e2e tests on one worker (their own control plane), the real-node ones in
# three lanes on three more, unit and integration tests on the fifth, and the floor run
# (`e2e-floor`) beside them on a plane of its own (docs/testing.md); the kind smoke test
# after them.
test:
	@TOOL_GROUPS='$(TOOL_GROUPS)' NODE_TOOL_GROUPS='$(NODE_TOOL_GROUPS)' \
		TEST_PREREQS='$(TEST_PREREQS)' TEST_CHECKS='$(TEST_CHECKS)' PYTEST_ARGS='$(PYTEST_ARGS)' BIN='$(BIN)' \
		PYTEST_WORKERS='$(PYTEST_WORKERS)' \
		bash hack/test.sh
	$(MAKE) --no-print-directory kind-smoke

# The tests marked `floor` again, against the oldest supported Kubernetes minor
# (hack/tools/kube-floor, no real node; docs/testing.md "The Kubernetes floor").
e2e-floor: install
	@bash hack/tools/build.sh kube kube-floor helm
	QSYS_KUBE_GROUP=kube-floor $(BIN)/python -m pytest -m floor tests/e2e $(PYTEST_ARGS)

# The unit tests that need no built tool: a contributor's first command. The ones
# marked `tools` (helm, promtool) run in `make test`.
unit: install
	$(BIN)/python -m pytest tests/unit -n 2 -m 'not tools' $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache

-include mk/*.mk

# KEEP=1: leave the cluster and the demo running (`make cluster-down` ends it).
# The cluster's tool groups build from the start, beside install and the images.
demo:
	@$(MAKE) --no-print-directory -j2 --output-sync=target cluster-up-tools images
	KEEP=$(KEEP) $(BIN)/python hack/demo.py
