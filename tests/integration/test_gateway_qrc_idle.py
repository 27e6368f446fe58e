"""Raw QRC idle sockets: a logged-on socket silent for the idle timeout is closed (as a
Core closes one), checked by the listener's once-a-second sweep; a socket that keeps
sending NoOp stays open. The real gateway in process, over loopback."""

from __future__ import annotations

import asyncio

import pytest
from gateway_harness import PANEL_TOKEN, base_config

from qsys_core_sim.server import CoreSimulator
from qsys_gateway.app import Gateway
from qsys_gateway.transports import qrc_tcp
from qsys_protocol.config import GatewayConfig
from qsys_protocol.qrc.client import QrcClient

pytestmark = pytest.mark.timeout(60)


async def test_silent_logged_on_socket_is_closed_and_a_talking_one_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(qrc_tcp, "IDLE_TIMEOUT", 0.8)
    monkeypatch.setattr(qrc_tcp, "IDLE_SWEEP", 0.1)
    async with CoreSimulator(idle_timeout=None) as sim:
        gateway = Gateway(GatewayConfig.model_validate(base_config(sim.port)))
        await gateway.start()
        try:
            assert await gateway.upstream.wait_up(10)
            port = gateway.runtime.config.listen.qrc
            assert port is not None
            silent = await QrcClient.connect("127.0.0.1", port)
            talking = await QrcClient.connect("127.0.0.1", port)
            logon = {"User": "panel", "Password": PANEL_TOKEN}
            assert await silent.call("Logon", logon) is True
            assert await talking.call("Logon", logon) is True
            loop = asyncio.get_running_loop()
            start = loop.time()
            while loop.time() - start < 2.0:
                assert await talking.call("NoOp", {}) is True
                await asyncio.sleep(0.2)
            await asyncio.wait_for(silent.closed.wait(), 1.0)
            assert not talking.closed.is_set()
            assert gateway.clients.count("qrc") == 1
            await talking.close()
            await silent.close()
        finally:
            await gateway.shutdown(1.0)
