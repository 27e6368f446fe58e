"""`listen.qrcOnCoreLoss`: what raw QRC clients see while the Core is away,
with a real simulator stopped and started again on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
import pytest
from gateway_harness import ADMIN_TOKEN, GatewayFactory

from qsys_core_sim.server import CoreSimulator
from qsys_protocol.qrc.client import ConnectionClosed, QrcClient
from qsys_protocol.qrc.errors import QrcError

pytestmark = pytest.mark.timeout(120)

ZONE = "Room101 Zone1 Gain"
GROUP = {"Id": "g", "Component": {"Name": ZONE, "Controls": [{"Name": "gain"}]}}


async def logged_on(port: int) -> QrcClient:
    client = await QrcClient.connect("127.0.0.1", port)
    assert await client.call("Logon", {"User": "admin", "Password": ADMIN_TOKEN}) is True
    return client


async def reconnect(port: int, timeout: float = 30.0) -> QrcClient:
    """What a Core client does after its socket closed: connect and Logon until it works."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await logged_on(port)
            except (OSError, ConnectionClosed, QrcError):
                await asyncio.sleep(0.2)


def gain_of(result: dict[str, Any]) -> list[float]:
    return [c["Value"] for c in result["Changes"] if c.get("Component") == ZONE]


async def ws_call(ws: aiohttp.ClientWebSocketResponse, rid: int, method: str, params: Any) -> Any:
    await ws.send_json({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive_json()
            if msg.get("id") == rid:
                return msg


async def test_close_mirrors_the_core(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """The default: sockets close on loss, new ones are refused while the Core is away, a
    client that reconnects and re-creates its groups works, other transports' groups stay."""
    async with CoreSimulator(idle_timeout=None) as sim:
        gw = await asyncio.to_thread(make_gateway, sim.port)
        assert "qrcOnCoreLoss" not in gw.config["listen"]  # the default is under test
        client = await logged_on(gw.qrc_port)
        await client.call("ChangeGroup.AddComponentControl", GROUP)
        assert gain_of(await client.call("ChangeGroup.Poll", {"Id": "g"})) == [-20.0]
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with http.ws_connect(gw.ws_url, headers=headers) as ws:
            added = await ws_call(ws, 1, "ChangeGroup.AddComponentControl", GROUP)
            assert added["result"] is True
            assert gain_of((await ws_call(ws, 2, "ChangeGroup.Poll", {"Id": "g"}))["result"]) == [
                -20.0
            ]

            await sim.stop()
            await asyncio.wait_for(client.closed.wait(), 10)  # as a Core's socket would
            with pytest.raises((ConnectionClosed, OSError, QrcError)):
                await logged_on(gw.qrc_port)  # refused while the Core is away
            assert (await ws_call(ws, 3, "Control.Get", ["MainGain"]))["error"]["code"] == -32050

            await sim.start()
            sim.set_control("gain", -33.0, ZONE)
            again = await reconnect(gw.qrc_port)
            try:
                assert await again.call("ChangeGroup.AddComponentControl", GROUP) is True
                first = await again.call("ChangeGroup.Poll", {"Id": "g"})
                assert gain_of(first) == [-33.0]
                assert await again.call("Control.Set", {"Name": "MainGain", "Value": -5})
            finally:
                await again.close()
            # the WebSocket client's group survived the outage and sees the change
            async with asyncio.timeout(15):
                while True:
                    polled = await ws_call(ws, 4, "ChangeGroup.Poll", {"Id": "g"})
                    if gain_of(polled["result"]) == [-33.0]:
                        break
                    await asyncio.sleep(0.1)
        await client.close()


async def test_keep_holds_sockets_and_groups(make_gateway: GatewayFactory) -> None:
    async with CoreSimulator(idle_timeout=None) as sim:

        def keep(config: dict[str, Any]) -> None:
            config["listen"]["qrcOnCoreLoss"] = "keep"

        gw = await asyncio.to_thread(make_gateway, sim.port, keep)
        client = await logged_on(gw.qrc_port)
        try:
            await client.call("ChangeGroup.AddComponentControl", GROUP)
            assert gain_of(await client.call("ChangeGroup.Poll", {"Id": "g"})) == [-20.0]
            await sim.stop()
            async with asyncio.timeout(10):
                while True:
                    resp = await client.request("Control.Get", ["MainGain"])
                    if resp.error is not None:
                        break
                    await asyncio.sleep(0.1)
            assert resp.error["code"] == -32050
            # the group is held by the gateway: polls answer (nothing new) during the outage
            assert (await client.call("ChangeGroup.Poll", {"Id": "g"}))["Changes"] == []
            newcomer = await logged_on(gw.qrc_port)  # admitted, and told the Core is away
            resp = await newcomer.request("StatusGet", 0)
            await newcomer.close()
            assert not client.closed.is_set()
            await sim.start()
            sim.set_control("gain", -44.0, ZONE)
            async with asyncio.timeout(20):
                while True:
                    changes = gain_of(await client.call("ChangeGroup.Poll", {"Id": "g"}))
                    if changes:
                        break
                    await asyncio.sleep(0.1)
            assert changes == [-44.0]  # same socket, same group, no re-add
        finally:
            await client.close()


class WaitingClient:
    """A raw QRC client that waits on its call ids with no timeout of its own, as the
    Home Assistant library waits on its Logon: a socket that closes without answering an
    id hangs it for ever (the test's own timeout is the only limit here)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames: list[dict[str, Any]] = []
        self.eof = False
        self._buffer = b""

    @classmethod
    async def connect(cls, port: int) -> WaitingClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, rid: int, method: str, params: Any) -> None:
        msg = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
        self.writer.write(json.dumps(msg).encode() + b"\x00")

    async def _read(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            self.eof = True
            return
        self._buffer += data
        *frames, self._buffer = self._buffer.split(b"\x00")
        self.frames.extend(json.loads(f) for f in frames if f)

    def answer(self, rid: int) -> dict[str, Any] | None:
        return next((f for f in self.frames if f.get("id") == rid), None)

    async def wait_answers(self, *rids: int) -> dict[int, dict[str, Any]]:
        """Every id answered; fails (as the client would hang) if the socket closes first."""
        while any(self.answer(r) is None for r in rids):
            assert not self.eof, f"socket closed with ids unanswered: {self.frames}"
            await self._read()
        return {r: self.answer(r) or {} for r in rids}

    async def wait_closed(self) -> None:
        while not self.eof:
            await self._read()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def test_close_answers_a_pending_logon_before_closing(
    make_gateway: GatewayFactory,
) -> None:
    """A client that connects and logs on while the Core is away gets -32050 under its
    Logon's id (and every other id) before the socket closes; it gets in once the Core
    is back. Default `qrcOnCoreLoss: close`."""
    async with CoreSimulator(idle_timeout=None) as sim:
        gw = await asyncio.to_thread(make_gateway, sim.port)
        await sim.stop()
        await wait_metric(gw, "qsys_gateway_upstream_up", 0)
        for attempt in range(3):
            client = await WaitingClient.connect(gw.qrc_port)
            try:
                client.send(1, "Logon", {"User": "admin", "Password": ADMIN_TOKEN})
                client.send(2, "StatusGet", 0)
                client.send(3, "Control.Get", ["MainGain"])
                async with asyncio.timeout(15):
                    answers = await client.wait_answers(1, 2, 3)
                    await client.wait_closed()
                assert [answers[r]["error"]["code"] for r in (1, 2, 3)] == [-32050] * 3, attempt
                assert not any(f.get("id") is None and "error" in f for f in client.frames)
            finally:
                await client.close()
        await sim.start()
        async with asyncio.timeout(30):
            while True:
                client = await WaitingClient.connect(gw.qrc_port)
                try:
                    client.send(1, "Logon", {"User": "admin", "Password": ADMIN_TOKEN})
                    answers = await client.wait_answers(1)
                    if answers[1].get("result") is True:
                        client.send(2, "Control.Get", ["MainGain"])
                        got = (await client.wait_answers(2))[2]
                        assert got["result"][0]["Name"] == "MainGain"
                        break
                finally:
                    await client.close()
                await asyncio.sleep(0.2)


async def wait_metric(gw: Any, name: str, value: float) -> None:
    await asyncio.to_thread(gw.wait_metric, name, value, 15)


@pytest.mark.parametrize("mode", ["close", "keep"])
async def test_calls_in_flight_when_the_core_is_lost_are_answered(
    make_gateway: GatewayFactory, mode: str
) -> None:
    """Calls in flight (the Core is slow) and calls sent as the Core goes each get an
    answer under their own id; with `close` the socket closes after that, with `keep` it
    stays, and the same socket works once the Core is back."""
    async with CoreSimulator(idle_timeout=None) as sim:

        def edit(config: dict[str, Any]) -> None:
            config["listen"]["qrcOnCoreLoss"] = mode

        gw = await asyncio.to_thread(make_gateway, sim.port, edit)
        client = await WaitingClient.connect(gw.qrc_port)
        late = await WaitingClient.connect(gw.qrc_port)  # logs on as the Core goes
        try:
            client.send(1, "Logon", {"User": "admin", "Password": ADMIN_TOKEN})
            assert (await client.wait_answers(1))[1]["result"] is True
            sim.faults.latency = 3.0  # these are still pending when the Core goes
            for rid in range(10, 50):  # more than the 32 a connection runs at once
                client.send(rid, "Control.Get", ["MainGain"])
            client.send(50, "Control.Set", {"Name": "MainGain", "Value": -6})
            await asyncio.sleep(0.3)
            stopping = asyncio.create_task(sim.stop())
            late.send(1, "Logon", {"User": "admin", "Password": ADMIN_TOKEN})
            late.send(2, "Control.Get", ["MainGain"])
            await stopping
            async with asyncio.timeout(20):
                answers = await client.wait_answers(*range(10, 51))
                late_answers = await late.wait_answers(1, 2)
            assert {a["error"]["code"] for a in answers.values()} == {-32050}, answers
            assert late_answers[1].get("result") is True or (
                late_answers[1]["error"]["code"] == -32050
            )
            assert "error" in late_answers[2]
            if mode == "close":
                async with asyncio.timeout(10):
                    await client.wait_closed()
                    await late.wait_closed()
                return
            sim.faults.latency = 0.0
            await sim.start()
            async with asyncio.timeout(30):
                rid = 100
                while True:
                    rid += 1
                    client.send(rid, "Control.Get", ["MainGain"])
                    got = (await client.wait_answers(rid))[rid]
                    if "result" in got:
                        break
                    await asyncio.sleep(0.2)
            assert not client.eof
        finally:
            await client.close()
            await late.close()
