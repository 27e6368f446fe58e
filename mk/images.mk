# Container images built without Docker (hack/images.py, docs/images.md) into
# $(QSYS_TOOLS_CACHE)/images; a no-op while their inputs are unchanged.
.PHONY: images image-paths image-names images-lock

images: install
	@$(BIN)/python hack/images.py build

# The OCI tarballs (`ctr -n k8s.io images import --base-name X FILE`), one a line.
image-paths: install
	@$(BIN)/python hack/images.py paths

image-names: install
	@$(BIN)/python hack/images.py names

# Re-pin hack/images/requirements.txt after a dependency change in pyproject.toml.
images-lock: install
	$(BIN)/python hack/images.py lock

# The tests unpack and compare the images (tests/integration/test_images.py).
TEST_PREREQS += images
