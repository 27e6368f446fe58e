"""The gateway as an MCP server on `/v1/mcp` (docs/mcp.md)."""
