"""Attackers who share an address with real clients, or flood refused authentications:
the real gateway in front of the simulator, over real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson
import pytest
from gateway_harness import ADMIN_TOKEN, PANEL_TOKEN, GatewayFactory

from qsys_testkit import CoreSimulator, subject

SHARED = "127.0.0.77"
"""The one address attackers and valid clients share (an office NAT, a node's SNAT)."""
CAP = 64
ATTEMPTS = 6
"""Valid attempts per transport, each after the attackers topped the caps up again."""


def _patient_attackers(config: dict[str, Any]) -> None:
    """Deadlines far beyond the test, so only the per-source caps can make room."""
    config["limits"].update(
        maxPendingConnectionsPerSource=CAP,
        maxUnauthenticatedClientsPerSource=CAP,
        headerTimeoutSeconds=120,
        logonTimeoutSeconds=120,
    )


def _call(rid: int, method: str, params: Any = None, **extra: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}, **extra}


async def _qrc_reply(reader: asyncio.StreamReader, rid: int) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            frame = orjson.loads((await reader.readuntil(b"\x00"))[:-1])
            if frame.get("id") == rid:
                return dict(frame)


async def _ws_reply(ws: aiohttp.ClientWebSocketResponse, rid: int) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            msg = await ws.receive_json()
            if msg.get("id") == rid:
                return dict(msg)


async def _silent_qrc(port: int) -> Any:
    """A raw QRC socket from the shared address that never logs on."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(SHARED, 0))
    return writer


async def _unfinished_http(port: int) -> Any:
    """An HTTP request from the shared address whose head never ends (slowloris)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(SHARED, 0))
    writer.write(b"POST /v1/rpc HTTP/1.1\r\nHost: x\r\nX-Slow: a\r\n")
    await writer.drain()
    return writer


async def test_a_shared_address_never_locks_out_valid_clients(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port, _patient_attackers)
    attackers: list[Any] = []
    kept_qrc: list[tuple[asyncio.StreamReader, Any]] = []
    kept_ws: list[aiohttp.ClientWebSocketResponse] = []
    connector = aiohttp.TCPConnector(local_addr=(SHARED, 0), force_close=True)
    timings: list[float] = []
    try:
        for _ in range(CAP):
            attackers.append(await _silent_qrc(gw.qrc_port))
            attackers.append(await _unfinished_http(gw.http_port))
        await asyncio.sleep(0.3)
        assert await asyncio.to_thread(gw.metric, "qsys_gateway_unauthenticated_clients") == CAP
        async with aiohttp.ClientSession(connector=connector) as http:
            for n in range(ATTEMPTS):
                # The caps are full again before every attempt: each new attacker evicts
                # the address's oldest unproven one.
                for _ in range(4):
                    attackers.append(await _silent_qrc(gw.qrc_port))
                    attackers.append(await _unfinished_http(gw.http_port))
                started = time.monotonic()
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", gw.qrc_port, local_addr=(SHARED, 0)
                )
                kept_qrc.append((reader, writer))
                writer.write(
                    orjson.dumps(_call(1, "Logon", {"User": "panel", "Password": PANEL_TOKEN}))
                    + b"\x00"
                )
                assert (await _qrc_reply(reader, 1)).get("result") is True, f"qrc attempt {n}"
                timings.append(time.monotonic() - started)

                started = time.monotonic()
                async with http.post(
                    f"{gw.url}/v1/rpc",
                    json=_call(1, "NoOp"),
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                ) as r:
                    assert r.status == 200, f"http attempt {n}: {r.status}"
                timings.append(time.monotonic() - started)

                started = time.monotonic()
                ws = await http.ws_connect(
                    gw.ws_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
                )
                kept_ws.append(ws)
                await ws.send_json(_call(1, "NoOp"))
                assert (await _ws_reply(ws, 1)).get("result") is True, f"ws attempt {n}"
                timings.append(time.monotonic() - started)

                started = time.monotonic()
                qrwc = await http.ws_connect(f"{gw.url}/qrc-public-api/v0")
                kept_ws.append(qrwc)
                await qrwc.send_json(_call(1, "NoOp", apiKey=ADMIN_TOKEN))
                assert (await _ws_reply(qrwc, 1)).get("result") is True, f"qrwc attempt {n}"
                timings.append(time.monotonic() - started)
            assert max(timings) < 1.0, timings
            # Authenticated connections are never what the caps evict.
            for i, (reader, writer) in enumerate(kept_qrc):
                writer.write(orjson.dumps(_call(100 + i, "NoOp")) + b"\x00")
                assert (await _qrc_reply(reader, 100 + i)).get("result") is True
            for i, ws in enumerate(kept_ws):
                await ws.send_json(_call(200 + i, "NoOp"))
                assert (await _ws_reply(ws, 200 + i)).get("result") is True
            # Bounded: the attackers never hold more than the caps.
            assert await asyncio.to_thread(gw.metric, "qsys_gateway_unauthenticated_clients") <= CAP
            http_open = await asyncio.to_thread(gw.metric, "qsys_gateway_http_connections")
            assert http_open <= CAP + len(kept_ws) + 2, http_open
            for ws in kept_ws:
                await ws.close()
    finally:
        for writer in attackers:
            writer.close()
        for _, writer in kept_qrc:
            writer.close()
    evicted_http = gw.metric(
        "qsys_gateway_connections_refused_total", listener="http", reason="evicted_per_source"
    )
    evicted_qrc = gw.metric(
        "qsys_gateway_connections_refused_total", listener="qrc", reason="evicted_per_source"
    )
    assert evicted_http >= ATTEMPTS * 4, evicted_http
    assert evicted_qrc >= ATTEMPTS * 4, evicted_qrc
    assert gw.metric("qsys_gateway_connections_refused_total", reason="per_source") == 0


async def _refused_qrwc_flood(gw_url: str, frames: int, per_frame: int) -> int:
    """QRWC frames of `per_frame` calls, each a wrong apiKey and a different method name;
    returns the refusals received."""
    refused = 0
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{gw_url}/qrc-public-api/v0") as ws,
    ):
        for f in range(frames):
            batch = [
                _call(
                    f * per_frame + i,
                    f"Attacker.Method{f}-{i}-" + "x" * 40,
                    apiKey=f"wrong-key-{f}-{i}",
                )
                for i in range(per_frame)
            ]
            await ws.send_str(orjson.dumps(batch).decode())
            got = 0
            async with asyncio.timeout(10):
                while got < per_frame:
                    reply = await ws.receive_json()
                    got += 1
                    refused += "error" in reply
    return refused


def _log_bytes(gw: Any) -> int:
    return len(gw.stdout().encode()) + len(gw.stderr().encode())


async def test_refused_authentications_cost_a_few_bytes_of_log_each(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port)
    await asyncio.sleep(0.5)
    before = await asyncio.to_thread(_log_bytes, gw)
    frames, per_frame = 20, 100
    refused = await _refused_qrwc_flood(gw.url, frames, per_frame)
    assert refused == frames * per_frame
    await asyncio.sleep(1.5)  # counted lines are written when their window closes
    written = await asyncio.to_thread(_log_bytes, gw) - before
    per_call = written / refused
    assert per_call < 20, f"{per_call:.1f} bytes of audit and log per refused call"
    lines = [x for x in gw.audit_lines() if x["subject"] == "-"]
    # Every refusal is accounted for, under a fixed method word, never the attacker's.
    assert sum(x.get("count", 1) for x in lines) == refused
    assert {x["method"] for x in lines} == {"Logon"}
    assert not any("Attacker" in line or "wrong-key" in line for line in gw.stdout().splitlines())
    assert not any("Attacker" in line or "wrong-key" in line for line in gw.stderr().splitlines())
    # The throttle engaged and the refusals stayed cheap after it.
    assert {x["outcome"] for x in lines} == {"unauthenticated", "rate_limited"}
    before = await asyncio.to_thread(_log_bytes, gw)
    refused = await _refused_qrwc_flood(gw.url, frames, per_frame)
    await asyncio.sleep(1.5)
    written = await asyncio.to_thread(_log_bytes, gw) - before
    assert written / refused < 20, f"{written / refused:.1f} bytes per throttled refusal"
    with contextlib.suppress(Exception):
        print(f"refused authentication: {per_call:.1f} then {written / refused:.1f} bytes/call")


FLOOD_TOKEN = "fld-0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c66"
CORE_LATENCY = 0.2
"""Seconds the simulator takes to answer each call (answered concurrently, as a Core)."""
FLOOD_CONNECTIONS = 20
"""x 32 calls in flight each: 640, more than the 512 the two Core connections queue."""


def _flood_and_calm(config: dict[str, Any]) -> None:
    config["subjects"].append(
        subject(
            "flood",
            FLOOD_TOKEN,
            methods=["*"],
            rate={"requestsPerSecond": 100000, "burst": 100000},
        )
    )
    config["core"]["requestTimeoutSeconds"] = 5


async def _flood(url: str, stop: asyncio.Event, answers: Counter[str]) -> None:
    """One connection of `flood`, keeping 32 Control.Get in flight until `stop`."""
    headers = {"Authorization": f"Bearer {FLOOD_TOKEN}"}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        for i in range(32):
            await ws.send_json(_call(i, "Control.Get", ["MainGain"]))
        n = 32
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    reply = await ws.receive_json()
                    if "id" not in reply:  # EngineStatus
                        continue
                    answers["ok" if "result" in reply else str(reply["error"]["code"])] += 1
                    await ws.send_json(_call(n, "Control.Get", ["MainGain"]))
                    n += 1


async def _calm_latencies(url: str, seconds: float) -> tuple[list[float], Counter[str]]:
    """A `panel` connection reading one control, one call at a time, 0.1 s apart."""
    latencies: list[float] = []
    answers: Counter[str] = Counter()
    headers = {"Authorization": f"Bearer {PANEL_TOKEN}"}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        end = time.monotonic() + seconds
        rid = 0
        while time.monotonic() < end:
            rid += 1
            started = time.monotonic()
            await ws.send_json(_call(rid, "Control.Get", ["LobbyMusicLevel"]))
            reply = await _ws_reply(ws, rid)
            latencies.append(time.monotonic() - started)
            answers["ok" if "result" in reply else str(reply["error"]["code"])] += 1
            await asyncio.sleep(0.1)
    return latencies, answers


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.95) - 1)]


@pytest.mark.timing  # a latency bound: a loaded machine's scheduling is not the flood's
async def test_one_flooding_subject_does_not_starve_the_others_upstream(
    make_gateway: GatewayFactory,
) -> None:
    async with CoreSimulator(idle_timeout=None) as sim:
        sim.faults.latency = CORE_LATENCY
        gw = await asyncio.to_thread(make_gateway, sim.port, _flood_and_calm)
        quiet, _ = await _calm_latencies(gw.ws_url, 1.5)
        stop = asyncio.Event()
        flooded: Counter[str] = Counter()
        flooders = [
            asyncio.create_task(_flood(gw.ws_url, stop, flooded)) for _ in range(FLOOD_CONNECTIONS)
        ]
        try:
            await asyncio.sleep(1.0)  # the flood is at full depth
            calm = await asyncio.gather(*(_calm_latencies(gw.ws_url, 6.0) for _ in range(4)))
            latencies = [x for got, _ in calm for x in got]
            answers = sum((counts for _, counts in calm), Counter[str]())
            pending = await asyncio.to_thread(gw.metric, "qsys_gateway_subject_share_full_total")
        finally:
            stop.set()
            failures = await asyncio.gather(*flooders, return_exceptions=True)
        assert not any(failures), failures
    print(
        f"calm p95 {_p95(quiet) * 1000:.0f} ms alone, {_p95(latencies) * 1000:.0f} ms while "
        f"flooded ({len(latencies)} calls, answers {dict(answers)}); flood answers "
        f"{dict(flooded)}"
    )
    assert answers == Counter(ok=len(latencies)), answers
    assert _p95(latencies) < CORE_LATENCY + 0.3, _p95(latencies)
    # The flood was served too, at its share (128 pending / 0.2 s), not refused.
    assert flooded["ok"] > 1000, flooded
    assert pending == 0
