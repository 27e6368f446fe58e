"""Reads that run without a task (`DirectCall`), through an in-process gateway over real
sockets, in front of a simulator that answers late: a client that leaves with reads in
flight, and a Core that drops them, leave nothing held in the gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from qsys_core_sim.server import CoreSimulator
from qsys_gateway.app import Gateway
from qsys_protocol.config import parse_config
from qsys_protocol.qrc.errors import ErrorCode
from qsys_testkit import LOOPBACK, gateway_config, subject

pytestmark = pytest.mark.timeout(60)

TOKEN = "direct-token-0123456789abcdef0123"


@pytest.fixture
async def sim() -> AsyncIterator[CoreSimulator]:
    async with CoreSimulator(idle_timeout=None) as core:
        yield core


@pytest.fixture
async def gateway(sim: CoreSimulator, request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    """`@pytest.mark.parametrize("gateway", [(share, timeout)], indirect=True)`: the
    subject's share of pending Core calls and the Core's request timeout."""
    share, timeout = getattr(request, "param", (128, 5.0))
    raw = gateway_config(sim.port, [subject("panel", TOKEN, methods=["*"])])
    raw["limits"]["maxPendingCoreCallsPerSubject"] = share
    raw["core"]["requestTimeoutSeconds"] = timeout
    gw = Gateway(parse_config(raw))
    await gw.start()
    try:
        assert await gw.upstream.wait_up(5.0)
        yield gw
    finally:
        await gw.shutdown(grace=1.0)


class Client:
    """A raw QRC client that logs on and reads its replies by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.replies: dict[Any, dict[str, Any]] = {}

    @classmethod
    async def open(cls, gw: Gateway) -> Client:
        port = gw.runtime.config.listen.qrc
        assert port is not None
        client = cls(*await asyncio.open_connection(LOOPBACK, port))
        client.send({"jsonrpc": "2.0", "id": "logon", "method": "Logon",
                     "params": {"User": "panel", "Password": TOKEN}})  # fmt: skip
        assert (await client.reply("logon"))["result"] is True
        return client

    def send(self, msg: dict[str, Any]) -> None:
        self.writer.write(orjson.dumps(msg) + b"\0")

    def read(self, rid: int | str) -> None:
        self.send({"jsonrpc": "2.0", "id": rid, "method": "Control.Get", "params": ["MainGain"]})

    async def reply(self, rid: Any) -> dict[str, Any]:
        async with asyncio.timeout(10):
            while rid not in self.replies:
                frame = await self.reader.readuntil(b"\0")
                msg = orjson.loads(frame[:-1])
                if "id" in msg:
                    self.replies[msg["id"]] = msg
        return self.replies[rid]

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def settled(gw: Gateway, what: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "the gateway still holds the calls"
        await asyncio.sleep(0.02)


def holds_nothing(gw: Gateway) -> bool:
    return (
        gw.runtime.in_flight == 0
        and gw.runtime.in_flight_gate.used == 0
        and gw.upstream.shares.pending("panel") == 0
        and gw.upstream.shares.waiting("panel") == 0
        and all(c.pending == 0 for c in gw.upstream._conns)
    )


async def test_reads_are_answered_with_no_task_per_call(
    gateway: Gateway, sim: CoreSimulator
) -> None:
    client = await Client.open(gateway)
    try:
        tasks = len(asyncio.all_tasks())
        sim.faults.latency = 1.0
        for rid in range(1, 9):
            client.read(rid)
        await settled(gateway, lambda: gateway.runtime.in_flight == 8)
        assert len(asyncio.all_tasks()) <= tasks + 2  # not one per call
        for rid in range(1, 9):
            assert (await client.reply(rid))["result"][0]["Name"] == "MainGain"
        await settled(gateway, lambda: holds_nothing(gateway))
    finally:
        await client.close()


async def test_a_client_that_leaves_with_reads_in_flight_leaves_nothing_held(
    gateway: Gateway, sim: CoreSimulator
) -> None:
    client = await Client.open(gateway)
    sim.faults.latency = 1.0
    for rid in range(1, 9):
        client.read(rid)
    await settled(gateway, lambda: gateway.runtime.in_flight == 8)
    await client.close()
    await settled(gateway, lambda: holds_nothing(gateway))
    await asyncio.sleep(1.2)  # the Core's late answers reach no one
    assert holds_nothing(gateway)
    sim.faults.latency = 0.0
    again = await Client.open(gateway)
    try:
        again.read(1)
        assert "result" in await again.reply(1)
    finally:
        await again.close()


async def test_reads_the_core_drops_are_answered_and_release_what_they_held(
    gateway: Gateway, sim: CoreSimulator
) -> None:
    client = await Client.open(gateway)
    try:
        sim.faults.swallow_replies = -1
        for rid in range(1, 5):
            client.read(rid)
        await settled(gateway, lambda: gateway.runtime.in_flight == 4)
        sim.drop_connections()
        for rid in range(1, 5):
            reply = await client.reply(rid)
            assert reply["error"]["code"] == ErrorCode.CORE_UNAVAILABLE
        await settled(gateway, lambda: holds_nothing(gateway))
    finally:
        await client.close()


@pytest.mark.parametrize("gateway", [(2, 5.0)], indirect=True)
async def test_reads_over_the_share_wait_for_it_in_order_and_a_client_that_leaves_frees_it(
    gateway: Gateway, sim: CoreSimulator
) -> None:
    client = await Client.open(gateway)
    try:
        sim.faults.latency = 0.5
        for rid in range(1, 9):
            client.read(rid)
        await settled(gateway, lambda: gateway.upstream.shares.waiting("panel") == 6)
        assert gateway.upstream.shares.pending("panel") == 2
        for rid in range(1, 9):
            assert "result" in await client.reply(rid)
        await settled(gateway, lambda: holds_nothing(gateway))
        for rid in range(11, 19):
            client.read(rid)
        await settled(gateway, lambda: gateway.upstream.shares.waiting("panel") == 6)
    finally:
        await client.close()
    await settled(gateway, lambda: holds_nothing(gateway))


async def test_a_pipelined_set_then_get_reads_what_was_set(gateway: Gateway) -> None:
    """A Core takes a socket's calls in order: a Get sent right behind a Set (one write,
    no wait for the Set's answer) reads the value the Set wrote."""
    client = await Client.open(gateway)
    try:
        for value in (-12.0, -7.0, -3.0):
            set_id, get_id = f"set{value}", f"get{value}"
            params = {"Name": "MainGain", "Value": value}
            client.send({"jsonrpc": "2.0", "id": set_id, "method": "Control.Set", "params": params})
            client.read(get_id)
            got = await client.reply(get_id)
            assert got["result"][0]["Value"] == value
            assert "result" in await client.reply(set_id)
    finally:
        await client.close()
