# Publishing a release to an OCI registry (hack/release.py, docs/install.md):
#   make release REGISTRY=host[:port]/path COSIGN_KEY=cosign.key [RELEASE_FLAGS=...]
# Registry login and trust come from the environment (DOCKER_CONFIG,
# HELM_REGISTRY_CONFIG, SSL_CERT_FILE), the key's password from COSIGN_PASSWORD.
# .github/workflows/release.yaml and tests/e2e/test_release_registry.py run this.
REGISTRY ?=
COSIGN_KEY ?= cosign.key
RELEASE_FLAGS ?=

.PHONY: release release-images

release: install
	@test -n '$(REGISTRY)' || { echo 'make release: set REGISTRY=host[:port]/path' >&2; exit 1; }
	@bash hack/tools/build.sh cosign helm
	$(BIN)/python hack/release.py --registry '$(REGISTRY)' --key '$(COSIGN_KEY)' $(RELEASE_FLAGS)

# The multi-arch layout and SBOMs `make release` pushes (built before the tests, which
# publish them to their own registry; after `images`, whose layers they share).
release-images: install images
	@$(BIN)/python hack/images.py release >/dev/null

# Beside the tool builds, as the other prerequisites of `make test` (hack/test.sh).
TEST_PREREQS += release-images
