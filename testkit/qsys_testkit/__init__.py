"""Test kit: the Core simulator, the gateway, the operator and redis-server as processes
on loopback that are always stopped, free ports, bounded waits, gateway configs.

    from qsys_testkit import GatewayProcess, SimulatorProcess, gateway_config, subject

    with SimulatorProcess() as sim, GatewayProcess(
        gateway_config(sim.port, [subject("ci", "ci-token-...", methods=["*"])])
    ) as gw:
        status, body = gw.rpc("ci-token-...", "StatusGet")

pytest fixtures: `pytest_plugins = ["qsys_testkit.pytest_plugin"]`. Kubernetes helpers
(`apply_crds`, `secret_text`): `qsys_testkit.kube`. See docs/testkit.md.
"""

from qsys_core_sim.server import CoreSimulator

from .gateway import (
    GatewayProcess,
    gateway_config,
    rpc,
    subject,
    token_sha256,
    wait_accepted,
)
from .net import LOOPBACK, free_port, http_get, http_ok, port_open, wait_for, wait_for_port
from .operator_process import OperatorProcess
from .process import ManagedProcess, executable, stop_process
from .redis import RedisProcess, SentinelProcess
from .simulator import SimulatorProcess

__all__ = [
    "LOOPBACK",
    "CoreSimulator",
    "GatewayProcess",
    "ManagedProcess",
    "OperatorProcess",
    "RedisProcess",
    "SentinelProcess",
    "SimulatorProcess",
    "executable",
    "free_port",
    "gateway_config",
    "http_get",
    "http_ok",
    "port_open",
    "rpc",
    "stop_process",
    "subject",
    "token_sha256",
    "wait_accepted",
    "wait_for",
    "wait_for_port",
]
