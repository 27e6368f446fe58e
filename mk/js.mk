# npm packages of the JavaScript tests (the vendor's QRWC SDK and `ws`), exactly as
# pinned by tests/js/package-lock.json; tests/integration/test_gateway_qrwc.py runs them.
JS_DIR := tests/js
JS_STAMP := $(JS_DIR)/node_modules/.installed

.PHONY: js-deps
js-deps: $(JS_STAMP)

$(JS_STAMP): $(JS_DIR)/package.json $(JS_DIR)/package-lock.json hack/install-system-deps.sh | system-deps
	cd $(JS_DIR) && npm ci --ignore-scripts --no-audit --no-fund
	touch $@
