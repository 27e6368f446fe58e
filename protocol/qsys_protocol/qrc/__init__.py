"""QRC protocol layer: NUL framing, JSON-RPC 2.0 messages, method models, error codes.

This is the bottom layer; it imports nothing else from the project.
"""
