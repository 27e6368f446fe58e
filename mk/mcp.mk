# The MCP Inspector (npm), exactly as pinned by tests/mcp-inspector/package-lock.json;
# tests/integration/test_mcp_inspector.py runs its CLI mode against /v1/mcp.
MCP_INSPECTOR_DIR := tests/mcp-inspector
MCP_INSPECTOR_STAMP := $(MCP_INSPECTOR_DIR)/node_modules/.installed

.PHONY: mcp-inspector
mcp-inspector: $(MCP_INSPECTOR_STAMP)

$(MCP_INSPECTOR_STAMP): $(MCP_INSPECTOR_DIR)/package.json $(MCP_INSPECTOR_DIR)/package-lock.json hack/install-system-deps.sh | system-deps
	cd $(MCP_INSPECTOR_DIR) && npm ci --ignore-scripts --no-audit --no-fund
	touch $@
