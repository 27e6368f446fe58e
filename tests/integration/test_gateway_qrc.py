"""Raw QRC listener of the real gateway: Logon, error 10, garbage, slow and oversized input."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import orjson
from gateway_harness import ADMIN_TOKEN, PANEL_TOKEN

from qsys_protocol.qrc.client import QrcClient
from qsys_testkit import GatewayProcess


async def connect(gw: GatewayProcess) -> QrcClient:
    return await QrcClient.connect("127.0.0.1", gw.qrc_port)


async def test_engine_status_on_connect_and_open_methods(shared_gateway: GatewayProcess) -> None:
    client = await connect(shared_gateway)
    try:
        hello = await client.next_notification("EngineStatus", timeout=10)
        assert hello.params["State"] == "Active"
        assert (await client.request("NoOp", {})).result is True
        assert (await client.request("StatusGet", 0)).result["State"] == "Active"
        for method, params in [
            ("Control.Get", ["LobbyMusicLevel"]),
            ("Component.GetComponents", None),
            ("ChangeGroup.Poll", {"Id": "x"}),
        ]:
            resp = await client.request(method, params)
            assert resp.error is not None
            assert resp.error["code"] == 10
    finally:
        await client.close()


async def test_logon(shared_gateway: GatewayProcess) -> None:
    client = await connect(shared_gateway)
    try:
        bad = await client.request("Logon", {"User": "panel", "Password": ADMIN_TOKEN})
        assert bad.error is not None
        assert bad.error["code"] == -32001
        locked = await client.request("Control.Get", ["LobbyMusicLevel"])
        assert locked.error is not None
        assert locked.error["code"] == 10
        ok = await client.request("Logon", {"User": "panel", "Password": PANEL_TOKEN})
        assert ok.result is True
        got = await client.call("Control.Get", ["LobbyMusicLevel"])
        assert got[0]["Name"] == "LobbyMusicLevel"
        denied = await client.request("Control.Get", ["MainGain"])
        assert denied.error is not None
        assert denied.error["code"] == -32003
        # One subject for life: the same Logon again is `true`, another is refused.
        again = await client.request("Logon", {"User": "panel", "Password": PANEL_TOKEN})
        assert again.result is True
        other = await client.request("Logon", {"User": "admin", "Password": ADMIN_TOKEN})
        assert other.error is not None
        assert other.error["code"] == -32600
    finally:
        await client.close()


async def _read_frames(reader: asyncio.StreamReader, n: int, timeout: float = 10) -> list[bytes]:
    frames: list[bytes] = []
    async with asyncio.timeout(timeout):
        while len(frames) < n:
            frame = await reader.readuntil(b"\x00")
            if b'"EngineStatus"' not in frame:
                frames.append(frame)
    return frames


async def test_garbage_on_the_qrc_port(shared_gateway: GatewayProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", shared_gateway.qrc_port)
    try:
        writer.write(b"\x00{not json\x00" + os.urandom(64).replace(b"\x00", b"!") + b"\x00")
        writer.write(b'[1,2,3]\x00"str"\x00{"jsonrpc":"2.0","id":1,"method":"NoOp"}\x00')
        frames = await _read_frames(reader, 7)
        assert b"-32700" in frames[0]
        assert b"-32700" in frames[1]
        assert all(b"-32600" in f for f in frames[2:6]), frames
        assert b'"result":true' in frames[-1]
        # a frame over maxMessageBytes without a terminator is refused, the socket survives
        writer.write(b"a" * 70000 + b"\x00" + b'{"jsonrpc":"2.0","id":2,"method":"NoOp"}\x00')
        frames = await _read_frames(reader, 2)
        assert b"-32600" in frames[0]
        assert b'"id":2' in frames[1]
    finally:
        writer.close()
    client = await connect(shared_gateway)
    try:
        assert (await client.request("NoOp", {})).result is True
    finally:
        await client.close()


async def test_silent_unauthenticated_client_is_closed(shared_gateway: GatewayProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", shared_gateway.qrc_port)
    started = time.monotonic()
    try:
        writer.write(b'{"jsonrpc":"2.0",')  # a slowloris: half a frame, then nothing
        async with asyncio.timeout(30):
            while await reader.read(65536):
                pass
    finally:
        writer.close()
    assert 5 < time.monotonic() - started < 30


async def test_batch_over_qrc(shared_gateway: GatewayProcess) -> None:
    client = await connect(shared_gateway)
    try:
        await client.call("Logon", {"User": "panel", "Password": PANEL_TOKEN})
        msgs: list[dict[str, Any]] = [
            {"jsonrpc": "2.0", "id": 101, "method": "NoOp", "params": {}},
            {
                "jsonrpc": "2.0",
                "id": 102,
                "method": "Snapshot.Save",
                "params": {"Name": "a", "Bank": 1},
            },
        ]
        replies: dict[int, Any] = {}
        loop = asyncio.get_running_loop()
        futures: dict[int, asyncio.Future[Any]] = {rid: loop.create_future() for rid in (101, 102)}
        for rid, fut in futures.items():
            client._pending[rid] = fut
        await client.send_raw(orjson.dumps(msgs) + b"\x00")
        for rid in (101, 102):
            replies[rid] = await asyncio.wait_for(futures[rid], 10)
        assert replies[101].result is True
        assert replies[102].error["code"] == -32003
    finally:
        await client.close()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, msg: dict[str, Any]
) -> dict[str, Any]:
    writer.write(orjson.dumps(msg) + b"\x00")
    async with asyncio.timeout(10):
        while True:
            frame: dict[str, Any] = orjson.loads((await reader.readuntil(b"\x00"))[:-1])
            if frame.get("id") == msg["id"]:
                return frame


async def test_failed_logons_never_lock_out_a_correct_token(shared_gateway: GatewayProcess) -> None:
    """Guessing a subject's token from one address (a NAT, an ingress) is throttled for that
    address and subject; the right token from the same address still logs on."""
    results: list[dict[str, Any]] = []
    for i in range(12):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", shared_gateway.qrc_port, local_addr=("127.0.0.33", 0)
        )
        try:
            logon = {"User": "panel", "Password": f"guess-{i}"}
            results.append(
                await _exchange(
                    reader, writer, {"jsonrpc": "2.0", "id": i, "method": "Logon", "params": logon}
                )
            )
        finally:
            writer.close()
    codes = [r["error"]["code"] for r in results]
    assert codes[:10] == [-32001] * 10
    assert codes[-1] == -32029
    for user, token in (("panel", PANEL_TOKEN), ("admin", ADMIN_TOKEN)):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", shared_gateway.qrc_port, local_addr=("127.0.0.33", 0)
        )
        try:
            logon = {"User": user, "Password": token}
            ok = await _exchange(
                reader, writer, {"jsonrpc": "2.0", "id": 1, "method": "Logon", "params": logon}
            )
        finally:
            writer.close()
        assert ok.get("result") is True, ok
