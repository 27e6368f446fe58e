"""Client-facing transports (HTTP, WebSocket, raw QRC TCP) over one admission path."""
