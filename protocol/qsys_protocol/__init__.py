"""Contracts shared by the gateway, the operator and the simulator.

`qrc`: the QRC wire protocol (framing, JSON-RPC, method models, error codes, a client).
`config`: the gateway config model (`gateway.yaml`), written by the operator, read by
the gateway. This is the bottom layer: it imports nothing else from the project.
"""
