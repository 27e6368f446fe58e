"""Attacks on the real gateway process (issue 11): each test fails on a gateway without
the matching bound. Loopback only; counts and times are bounded."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

from gateway_harness import ADMIN_TOKEN, GatewayFactory
from rawclients import rss_bytes, ws_close_code, ws_connect, ws_send_json

MiB = 1024 * 1024


def _fast(config: dict[str, Any]) -> None:
    config["limits"]["rate"] = {"requestsPerSecond": 20000, "burst": 20000}
    config["limits"]["maxClients"] = 200


def _big_reply_batches(n_batches: int, per_batch: int) -> list[list[dict[str, Any]]]:
    """Component.Get of one control named 1,000 times: a ~100 KB reply to a ~30 KB call."""
    refs = [{"Name": "input.1.output.1.gain"}] * 1000
    return [
        [
            {
                "jsonrpc": "2.0",
                "id": b * per_batch + i,
                "method": "Component.Get",
                "params": {"Name": "Room101 Mixer", "Controls": refs},
            }
            for i in range(per_batch)
        ]
        for b in range(n_batches)
    ]


async def test_websocket_clients_that_never_read_are_closed_and_memory_stays_bounded(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port, _fast)
    assert gw.proc is not None
    before = rss_bytes(gw.proc.pid)
    socks: list[socket.socket] = []
    try:
        for _ in range(4):
            sock = await asyncio.to_thread(ws_connect, gw.http_port, ADMIN_TOKEN, rcvbuf=4096)
            socks.append(sock)
        # ~100 KB per reply: 4 clients x 150 replies = 60 MB if nothing bounded it.
        for batch in _big_reply_batches(150, 1):
            for sock in socks:
                with contextlib.suppress(OSError):  # closed by the gateway: the point
                    await asyncio.to_thread(ws_send_json, sock, batch)
            await asyncio.sleep(0.02)
        peak = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            peak = max(peak, rss_bytes(gw.proc.pid))
            closed = await asyncio.to_thread(
                gw.metric, "qsys_gateway_slow_clients_closed_total", transport="ws"
            )
            if closed >= len(socks):
                break
            await asyncio.sleep(0.2)
        codes = [await asyncio.to_thread(ws_close_code, s) for s in socks]
    finally:
        for sock in socks:
            sock.close()
    assert peak - before < 40 * MiB, (before, peak)  # unbounded: 150 MB and more
    # 1008 when the close frame gets through; a reader that never reads gets a reset.
    assert all(c in (1008, None) for c in codes), codes
    assert gw.metric("qsys_gateway_slow_clients_closed_total", transport="ws") == len(socks)
    assert gw.metric("qsys_gateway_send_queue_bytes") == 0
