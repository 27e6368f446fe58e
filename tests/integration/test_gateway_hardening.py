"""Attacks on the real gateway process: each test fails on a gateway without
the matching bound. Loopback only; counts and times are bounded."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from gateway_harness import ADMIN_TOKEN, PANEL_TOKEN, SLOW_TOKEN, GatewayFactory
from rawclients import rss_bytes, ws_close_code, ws_connect, ws_send_json

from qsys_protocol.qrc.errors import ErrorCode

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
        # A socket the gateway closed, or stopped reading from, takes no more sends: each blocked
        # send would otherwise wait out the socket timeout, 600 times over.
        open_socks = list(socks)
        for batch in _big_reply_batches(150, 1):
            for sock in list(open_socks):
                sock.settimeout(1)
                try:
                    await asyncio.to_thread(ws_send_json, sock, batch)
                except OSError:  # closed by the gateway, or it stopped reading: the point
                    open_socks.remove(sock)
            if not open_socks:
                break
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


def _slowloris_limits(config: dict[str, Any]) -> None:
    config["limits"].update(
        maxHttpConnections=60,
        maxPendingConnectionsPerSource=10,
        headerTimeoutSeconds=2,
        bodyTimeoutSeconds=2,
    )


async def _open_trickling(port: int, source: str) -> tuple[asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(b"POST /v1/rpc HTTP/1.1\r\nHost: x\r\n")
    return reader, writer


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it is still open after `seconds`."""
    data = b""
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(4096):
                data += chunk
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return data


async def _noop_status(gw_url: str, source: str = "127.0.0.1") -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post(
            f"{gw_url}/v1/rpc",
            json={"jsonrpc": "2.0", "id": 1, "method": "NoOp", "params": {}},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as r,
    ):
        return r.status


async def test_http_header_trickle_is_cut_off(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port, _slowloris_limits)
    reader, writer = await _open_trickling(gw.http_port, "127.0.0.51")
    started = time.monotonic()
    try:

        async def trickle() -> None:
            for i in range(20):
                await asyncio.sleep(0.5)
                writer.write(f"X-Slow-{i}: a\r\n".encode())

        feeder = asyncio.create_task(trickle())
        got = await _closed_within(reader, 8)
        feeder.cancel()
    finally:
        writer.close()
    assert got is not None, "a header trickle kept the connection open"
    assert 1.5 < time.monotonic() - started < 6
    assert gw.metric("qsys_gateway_connections_refused_total", reason="header_timeout") >= 1


async def test_http_body_trickle_gets_408(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port, _slowloris_limits)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.http_port)
    try:
        writer.write(
            b"POST /v1/rpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        got = await _closed_within(reader, 8)
    finally:
        writer.close()
    assert got is not None
    assert got.startswith(b"HTTP/1.1 408"), got


async def test_http_connection_caps_keep_room_for_real_clients(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port, _slowloris_limits)
    held: list[tuple[asyncio.StreamReader, Any]] = []
    try:
        # One source: only 10 unproven connections; each newcomer closes its oldest.
        for _ in range(20):
            held.append(await _open_trickling(gw.http_port, "127.0.0.52"))
        # (all at once: the header timeout is 2 s)
        closed = await asyncio.gather(*(_closed_within(r, 0.5) for r, _ in held))
        assert closed == [b""] * 10 + [None] * 10, closed
        # Many sources up to the total cap: a real client still gets through (it takes
        # the slot of the connection idle longest), from a fresh source and from one
        # that is at its own cap.
        for i in range(10):
            for _ in range(8):
                held.append(await _open_trickling(gw.http_port, f"127.0.1.{i + 1}"))
        await asyncio.sleep(0.2)
        assert gw.metric("qsys_gateway_http_connections") <= 60
        assert await _noop_status(gw.url, "127.0.0.53") == 200
        assert await _noop_status(gw.url, "127.0.0.1") == 200
    finally:
        for _, w in held:
            w.close()
    assert gw.metric("qsys_gateway_connections_refused_total", reason="evicted_per_source") >= 10
    assert gw.metric("qsys_gateway_connections_refused_total", reason="evicted") >= 1


async def test_http_body_in_several_segments_is_read_whole(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port, _slowloris_limits)
    body = b'{"jsonrpc": "2.0", "id": 5, "method": "NoOp", "params": {}}'
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.http_port)
    try:
        writer.write(
            b"POST /v1/rpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10]
        )
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(body[10:])
        got = await _closed_within(reader, 8)
    finally:
        writer.close()
    assert got is not None
    assert got.startswith(b"HTTP/1.1 200"), got


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _ws_call(ws: aiohttp.ClientWebSocketResponse, rid: int, method: str, params: Any) -> Any:
    await ws.send_json({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive_json()
            if isinstance(msg, dict) and msg.get("id") == rid and "method" not in msg:
                return msg


async def test_autopoll_has_a_floor_and_costs_the_same_for_many_groups(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port, _fast)
    assert gw.proc is not None
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.ws_url, headers=headers) as ws:
        rid = 0
        for g in range(64):
            rid += 1
            add = {"Id": f"g{g}", "Controls": ["LobbyMusicLevel"]}
            assert (await _ws_call(ws, rid, "ChangeGroup.AddControl", add))["result"] is True
            rid += 1
            poll = {"Id": f"g{g}", "Rate": 1e-9}
            assert (await _ws_call(ws, rid, "ChangeGroup.AutoPoll", poll))["result"] is True
        await asyncio.sleep(0.5)
        before = _cpu_seconds(gw.proc.pid)
        started = time.monotonic()
        pushes = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                while True:
                    msg = await ws.receive_json()
                    pushes += msg.get("method") == "ChangeGroup.Poll"
        used = (_cpu_seconds(gw.proc.pid) - before) / (time.monotonic() - started)
    # Each group delivers its first value once; nothing changes afterwards, so an idle
    # gateway must stay idle: a busy loop per group would burn a whole core.
    assert pushes <= 64
    assert used < 0.10, f"gateway used {used:.0%} of a core with 64 idle AutoPoll groups"


def _group_quotas(config: dict[str, Any]) -> None:
    config["limits"].update(maxChangeGroupsPerConnection=4, maxChangeGroupsPerSubject=10)


async def test_change_group_quotas_per_connection_and_per_subject(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port, _group_quotas)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    panel = {"Authorization": f"Bearer {PANEL_TOKEN}"}
    results: list[list[Any]] = []
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(gw.ws_url, headers=admin) for _ in range(3)]
        try:
            for ws in sockets:
                codes: list[Any] = []
                for g in range(5):
                    add = {"Id": f"g{g}", "Controls": ["LobbyMusicLevel"]}
                    reply = await _ws_call(ws, g + 1, "ChangeGroup.AddControl", add)
                    codes.append(reply.get("result", reply.get("error", {}).get("code")))
                results.append(codes)
            async with http.ws_connect(gw.ws_url, headers=panel) as other:
                component = {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain"}]}
                theirs = await _ws_call(
                    other, 1, "ChangeGroup.AddComponentControl", {"Id": "p", "Component": component}
                )
        finally:
            for ws in sockets:
                await ws.close()
    assert results[0] == [True] * 4 + [5]  # per connection
    assert results[1] == [True] * 4 + [5]
    assert results[2] == [True] * 2 + [5] * 3  # per subject: 10 in all
    assert theirs.get("result") is True, theirs  # another subject is unaffected


def _hub_share(config: dict[str, Any]) -> None:
    config["limits"].update(maxHubControlsPerSubject=6)


def _watch(gid: str, component: str, *controls: str) -> dict[str, Any]:
    return {
        "Id": gid,
        "Component": {"Name": component, "Controls": [{"Name": c} for c in controls]},
    }


async def test_one_subject_holds_at_most_its_share_of_the_hub(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    """The controls one subject's change groups watch, over all its connections and its
    HTTP session, are bounded by `maxHubControlsPerSubject`; others keep their share."""
    gw = make_gateway(module_sim_port, _hub_share)
    zone1, zone2 = "Room101 Zone1 Gain", "Room101 Zone2 Gain"
    add = "ChangeGroup.AddComponentControl"
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(gw.ws_url, headers=admin) as one,
        http.ws_connect(gw.ws_url, headers=admin) as two,
    ):
        first = await _ws_call(one, 1, add, _watch("a", zone1, "gain", "mute", "invert", "bypass"))
        assert first["result"] is True
        over = await _ws_call(two, 1, add, _watch("b", zone2, "gain", "mute", "invert"))
        assert over["error"]["code"] == ErrorCode.CHANGE_GROUPS_EXHAUSTED
        assert "at most 6 controls" in over["error"]["message"]
        assert "maxHubControlsPerSubject" in over["error"]["message"]
        assert "4 watched, 3 more asked" in over["error"]["message"]
        # The refused add changed nothing: its new group does not exist.
        gone = await _ws_call(two, 2, "ChangeGroup.Poll", {"Id": "b"})
        assert gone["error"]["code"] == ErrorCode.UNKNOWN_CHANGE_GROUP
        fits = await _ws_call(two, 3, add, _watch("b", zone2, "gain", "mute"))
        assert fits["result"] is True
        # A control the subject already watches costs nothing more.
        again = await _ws_call(two, 4, add, _watch("b", zone1, "gain"))
        assert again["result"] is True
        polled = await _ws_call(two, 5, "ChangeGroup.Poll", {"Id": "b"})
        assert len(polled["result"]["Changes"]) == 3
        # The subject's HTTP session draws on the same share.
        code, reply = await _rpc(
            gw.url, ADMIN_TOKEN, add, _watch("h", "Room102 Zone1 Gain", "gain")
        )
        assert reply["error"]["code"] == ErrorCode.CHANGE_GROUPS_EXHAUSTED, (code, reply)
        # Another subject is unaffected, even on controls this one watches.
        code, theirs = await _rpc(gw.url, PANEL_TOKEN, add, _watch("p", zone1, "gain", "mute"))
        assert theirs.get("result") is True, (code, theirs)
        # Released controls return to the share (zone1 gain is still watched by "b").
        destroyed = await _ws_call(one, 2, "ChangeGroup.Destroy", {"Id": "a"})
        assert destroyed["result"] is True
        more = await _ws_call(two, 6, add, _watch("b", zone2, "invert", "bypass"))
        assert more["result"] is True
        full = await _ws_call(one, 3, add, _watch("c", zone1, "mute", "invert"))
        assert full["error"]["code"] == ErrorCode.CHANGE_GROUPS_EXHAUSTED


async def _rpc(gw_url: str, token: str, method: str, params: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gw_url}/v1/rpc",
            json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as r,
    ):
        return r.status, await r.json()


async def test_value_range_judges_booleans_as_the_core_applies_them(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    """panel may set Room101 Zone* gain/mute within -60..0 dB. `Value: true` on the gain
    would be applied as +1 dB; on the (Boolean) mute it is a mute."""
    gw = make_gateway(module_sim_port)
    zone = "Room101 Zone2 Gain"

    async def set_zone(control: str, value: Any) -> tuple[int, Any]:
        params = {"Name": zone, "Controls": [{"Name": control, "Value": value}]}
        return await _rpc(gw.url, PANEL_TOKEN, "Component.Set", params)

    assert (await set_zone("gain", -30))[0] == 200
    status, body = await set_zone("gain", True)
    assert status == 403, body
    _, got = await _rpc(
        gw.url, PANEL_TOKEN, "Component.Get", {"Name": zone, "Controls": [{"Name": "gain"}]}
    )
    assert got["result"]["Controls"][0]["Value"] == -30
    for value in (True, False):
        status, body = await set_zone("mute", value)
        assert status == 200, body


async def test_invisible_characters_in_names_never_reach_the_core(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port)
    for ch in ("\x00", "\n", "\u200b", "\u202e"):
        for component, control in (
            ("Room101 Zone1 Gain" + ch, "gain"),
            ("Room101 Zone1 Gain", ch + "gain"),
        ):
            params = {"Name": component, "Controls": [{"Name": control, "Value": -10}]}
            status, body = await _rpc(gw.url, ADMIN_TOKEN, "Component.Set", params)
            assert status == 400, body
            assert body["error"]["code"] == -32602  # the gateway's verdict, not the Core's 8
    assert "\\u0000" not in gw.stdout() + gw.stderr()


def _logon(rid: int, user: str, token: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "Logon",
        "params": {"User": user, "Password": token},
    }


async def _qrc_frames(reader: asyncio.StreamReader, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while len(out) < n:
            out.append(orjson.loads((await reader.readuntil(b"\x00"))[:-1]))
    return out


async def test_a_connection_keeps_one_subject_for_life_on_qrc(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.qrc_port)
    try:
        hello = await _qrc_frames(reader, 1)
        assert hello[0]["method"] == "EngineStatus"
        # Logon as panel, then as admin in the same batch: the switch must not happen.
        batch = [
            _logon(1, "panel", PANEL_TOKEN),
            _logon(2, "admin", ADMIN_TOKEN),
            {"jsonrpc": "2.0", "id": 3, "method": "Control.Get", "params": ["MainGain"]},
        ]
        writer.write(orjson.dumps(batch) + b"\x00")
        got = {f["id"]: f for f in await _qrc_frames(reader, 3)}
        assert got[1]["result"] is True
        assert got[2]["error"]["code"] == -32600
        assert got[3]["error"]["code"] == -32003  # still panel
        # A later frame: the same subject and token is fine, another is refused.
        for rid, (user, token, ok) in enumerate(
            [("panel", PANEL_TOKEN, True), ("admin", ADMIN_TOKEN, False), ("panel", "x", False)],
            start=10,
        ):
            writer.write(orjson.dumps(_logon(rid, user, token)) + b"\x00")
            (reply,) = await _qrc_frames(reader, 1)
            assert ("result" in reply) is ok, reply
        # Thousands of Logons never open another upstream session.
        many = [_logon(100 + i, "panel", PANEL_TOKEN) for i in range(100)]  # maxBatchCalls
        for _ in range(8):
            writer.write(orjson.dumps(many) + b"\x00")
            replies = await _qrc_frames(reader, 100)
            assert all(r.get("result") is True for r in replies)
        assert await asyncio.to_thread(gw.metric, "qsys_gateway_upstream_sessions") == 1
    finally:
        writer.close()


async def test_raw_qrc_logon_result_is_not_preceded_by_another_engine_status(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.qrc_port)
    try:
        (hello,) = await _qrc_frames(reader, 1)
        assert hello["method"] == "EngineStatus"
        writer.write(orjson.dumps(_logon(1, "panel", PANEL_TOKEN)) + b"\x00")
        (first,) = await _qrc_frames(reader, 1)
        assert first == {"jsonrpc": "2.0", "id": 1, "result": True}
        writer.write(b'{"jsonrpc":"2.0","id":2,"method":"NoOp","params":{}}\x00')
        (second,) = await _qrc_frames(reader, 1)
        assert second["id"] == 2
    finally:
        writer.close()


async def test_a_websocket_keeps_one_subject_for_life(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port)
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.ws_url) as ws:
        await ws.send_json([_logon(1, "panel", PANEL_TOKEN), _logon(2, "admin", ADMIN_TOKEN)])
        replies: dict[int, Any] = {}
        async with asyncio.timeout(10):
            while len(replies) < 2:
                msg = await ws.receive_json()
                if "id" in msg:
                    replies[msg["id"]] = msg
        assert replies[1]["result"] is True
        assert replies[2]["error"]["code"] == -32600
        reply = await _ws_call(ws, 3, "Control.Get", ["MainGain"])
        assert reply["error"]["code"] == -32003
    assert await asyncio.to_thread(gw.metric, "qsys_gateway_upstream_sessions") == 0


def _unauth_budget(config: dict[str, Any]) -> None:
    config["limits"].update(
        maxClients=5,
        maxUnauthenticatedClients=6,
        maxUnauthenticatedClientsPerSource=2,
        logonTimeoutSeconds=3,
    )


async def test_qrc_logon_deadline_is_absolute(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port, _unauth_budget)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.qrc_port)
    started = time.monotonic()

    async def trickle() -> None:
        for _ in range(30):
            await asyncio.sleep(0.5)
            writer.write(b" ")

    feeder = asyncio.create_task(trickle())
    try:
        got = await _closed_within(reader, 10)
    finally:
        feeder.cancel()
        writer.close()
    assert got is not None, "a byte every 0.5 s kept an unauthenticated socket open"
    assert 2.5 < time.monotonic() - started < 6


async def _qrc_logon(
    port: int, source: str, user: str, token: str
) -> tuple[Any, Any, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(orjson.dumps(_logon(1, user, token)) + b"\x00")
    async with asyncio.timeout(10):
        while True:
            frame = orjson.loads((await reader.readuntil(b"\x00"))[:-1])
            if frame.get("id", "x") in (1, None):
                return reader, writer, frame


async def test_unauthenticated_sockets_never_take_the_slots_of_clients_that_log_on(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port, _unauth_budget)
    idle: list[Any] = []
    clients: list[Any] = []
    try:
        # Three sources hold the whole unauthenticated budget (2 each); a source's third
        # closes its oldest, a fourth source's the oldest of all; nobody logs on.
        for i in range(4):
            for _ in range(3):
                idle.append(
                    await asyncio.open_connection(
                        "127.0.0.1", gw.qrc_port, local_addr=(f"127.0.2.{i + 1}", 0)
                    )
                )
        async with aiohttp.ClientSession() as http:
            for _ in range(2):  # WebSocket without a token: unauthenticated too
                with contextlib.suppress(aiohttp.WSServerHandshakeError):
                    idle.append(await http.ws_connect(gw.ws_url))
            # Real clients still get in: raw QRC that logs on, and WebSocket with a token.
            for n in range(4):
                _, writer, reply = await _qrc_logon(
                    gw.qrc_port, f"127.0.3.{n + 1}", "panel", PANEL_TOKEN
                )
                clients.append(writer)
                assert reply.get("result") is True, reply
            ws = await http.ws_connect(
                gw.ws_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            assert (await _ws_call(ws, 1, "NoOp", {}))["result"] is True
            # maxClients (5) logged-on clients: the next Logon is refused.
            _, writer, reply = await _qrc_logon(gw.qrc_port, "127.0.3.9", "panel", PANEL_TOKEN)
            clients.append(writer)
            assert reply["error"]["code"] == ErrorCode.CORE_UNAVAILABLE, reply
            await ws.close()
            for conn in idle:
                if isinstance(conn, aiohttp.ClientWebSocketResponse):
                    await conn.close()
    finally:
        for conn in idle:
            if isinstance(conn, tuple):
                conn[1].close()
        for writer in clients:
            writer.close()
    assert gw.metric("qsys_gateway_connections_refused_total", reason="evicted_per_source") >= 4
    assert gw.metric("qsys_gateway_connections_refused_total", reason="evicted") >= 1


def _noop_batch(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"jsonrpc": "2.0", "id": start + i, "method": "NoOp", "params": {}} for i in range(n)]


async def test_huge_batches_are_refused_whole_and_refusals_are_counted_not_repeated(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port)
    headers = {"Authorization": f"Bearer {SLOW_TOKEN}"}  # 2 calls/s, burst 2
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.ws_url, headers=headers) as ws:
        # Over the batch limit (100): one error, one audit line counting the calls.
        await ws.send_json(_noop_batch(1000))
        async with asyncio.timeout(10):
            while True:
                reply = await ws.receive_json()
                if "error" in reply or "result" in reply:
                    break
        assert reply["error"]["code"] == -32600
        assert "batch over 100" in reply["error"]["message"]
        # At the limit, refused by the rate limiter: every call answered, the audit
        # trail holds a few lines with counts, not one line per call.
        for b in range(20):
            await ws.send_json(_noop_batch(100, 1000 * (b + 1)))
        errors = 0
        async with asyncio.timeout(20):
            while errors < 2000:
                reply = await ws.receive_json()
                errors += "error" in reply
    # QRC before logon: wrong Logons in bulk.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.qrc_port)
    try:
        await _qrc_frames(reader, 1)  # EngineStatus
        wrong = [_logon(i, "panel", f"guess-{i}") for i in range(600)]  # < maxMessageBytes
        writer.write(orjson.dumps(wrong) + b"\x00")
        (too_big,) = await _qrc_frames(reader, 1)
        assert too_big["error"]["code"] == -32600
        writer.write(orjson.dumps(wrong[:100]) + b"\x00")
        replies = await _qrc_frames(reader, 100)
        assert all("error" in r for r in replies)
    finally:
        writer.close()
    await asyncio.sleep(1.5)  # the counted lines are written when their window closes
    lines = gw.audit_lines()
    batch = [x for x in lines if x["method"] == "batch"]
    assert sorted(x["count"] for x in batch) == [600, 1000]
    limited = [x for x in lines if x["reason"] == "rate limit exceeded"]
    assert sum(x.get("count", 1) for x in limited) >= 1990  # every refused call accounted
    assert len(limited) < 60, len(limited)
    assert all(x["callId"] is not None or x.get("callIds") for x in limited)
    logons = [x for x in lines if x["method"] == "Logon"]
    assert sum(x.get("count", 1) for x in logons) == 100
    assert len(logons) < 10, len(logons)
    failures_logged = [x for x in gw.log_lines() if x.get("message") == "authentication failed"]
    assert len(failures_logged) < 10


async def test_rate_limit_audit_lines_name_the_call(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = make_gateway(module_sim_port)
    headers = {"Authorization": f"Bearer {SLOW_TOKEN}"}
    calls = [
        {
            "jsonrpc": "2.0",
            "id": 7 + i,
            "method": "Control.Set",
            "params": {"Name": f"Lobby{i}", "Value": i},
        }
        for i in range(3)
    ]
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gw.url}/v1/rpc", json=calls, headers=headers) as r,
    ):
        assert r.status == 429
    await asyncio.sleep(0.3)
    limited = [x for x in gw.audit_lines() if x["reason"] == "rate limit exceeded"]
    assert [(x["callId"], x["targets"], x["values"]) for x in limited] == [
        (7, ["Lobby0"], [0]),
        (8, ["Lobby1"], [1]),
        (9, ["Lobby2"], [2]),
    ]


# ---- everything at once ------------------------------------------------------------------

MEMORY_LIMIT = 256 * MiB  # the chart's default memory limit for a gateway pod


async def _flood(deadline: float, coro_factory: Any) -> int:
    """Run `coro_factory()` again and again until `deadline`; count the rounds."""
    rounds = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(
            OSError, TimeoutError, asyncio.IncompleteReadError, aiohttp.ClientError
        ):
            await coro_factory()
        rounds += 1
        await asyncio.sleep(0)
    return rounds


async def test_all_attacks_together_stay_within_memory_and_keep_latency(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    """A bounded mix of every attack class at once (loopback, ~12 s) while a well-behaved
    client keeps calling: the gateway's RSS stays under the pod limit and the good
    client's latency stays normal. `make bench` has the longer run (`bench/attacks.py`)."""
    gw = make_gateway(module_sim_port, _unauth_budget_large)
    assert gw.proc is not None
    baseline_rss = rss_bytes(gw.proc.pid)
    duration = 12.0
    deadline = time.monotonic() + duration
    held: list[Any] = []
    latencies: list[float] = []

    async def good_client() -> None:
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                status, _ = await _post(http, gw.url, PANEL_TOKEN, "NoOp", {})
                latencies.append(time.perf_counter() - started)
                assert status == 200
                await asyncio.sleep(0.1)

    async def logon_storm() -> None:  # Critical 1: Logon after Logon on one socket
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.qrc_port)
        held.append(writer)
        many = orjson.dumps([_logon(i, "admin", ADMIN_TOKEN) for i in range(100)]) + b"\x00"
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                writer.write(many)
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.01):
                        while await reader.read(1 << 20):
                            pass

    async def qrc_trickle() -> None:  # High 3: unauthenticated sockets, a byte at a time
        async def one() -> None:
            _, writer = await asyncio.open_connection("127.0.0.1", gw.qrc_port)
            held.append(writer)
            writer.write(b" ")

        await _flood(deadline, one)

    async def http_slowloris() -> None:  # High 4
        async def one() -> None:
            _, writer = await _open_trickling(gw.http_port, "127.0.0.71")
            held.append(writer)
            await asyncio.sleep(0.01)

        await _flood(deadline, one)

    async def huge_batches() -> None:  # High 5, over the limit and at it
        headers = {"Authorization": f"Bearer {SLOW_TOKEN}"}
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(gw.ws_url, headers=headers) as ws,
        ):
            while time.monotonic() < deadline:
                await ws.send_json(_noop_batch(1000))
                await ws.send_json(_noop_batch(100))
                with contextlib.suppress(TimeoutError):
                    while True:
                        await ws.receive(timeout=0.01)

    async def non_reader() -> None:  # Medium 9
        sock = await asyncio.to_thread(ws_connect, gw.http_port, ADMIN_TOKEN, rcvbuf=4096)
        held.append(sock)
        for batch in _big_reply_batches(60, 1):
            if time.monotonic() > deadline:
                break
            with contextlib.suppress(OSError):
                await asyncio.to_thread(ws_send_json, sock, batch)

    async def autopoll_and_groups() -> None:  # Medium 8 and High 7
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(gw.ws_url, headers=headers) as ws,
        ):
            for g in range(80):
                add = {"Id": f"g{g}", "Controls": ["LobbyMusicLevel"]}
                await ws.send_json(
                    {
                        "jsonrpc": "2.0",
                        "id": 2 * g,
                        "method": "ChangeGroup.AddControl",
                        "params": add,
                    }
                )
                poll = {"Id": f"g{g}", "Rate": 1e-9}
                await ws.send_json(
                    {
                        "jsonrpc": "2.0",
                        "id": 2 * g + 1,
                        "method": "ChangeGroup.AutoPoll",
                        "params": poll,
                    }
                )
            while time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    await ws.receive(timeout=0.2)

    async def wrong_tokens() -> None:  # High 6 (from the good client's own address)
        async with aiohttp.ClientSession() as http:

            async def one() -> None:
                await _post(http, gw.url, "wrong-token", "NoOp", {})

            await _flood(deadline, one)

    peak = baseline_rss

    async def watch() -> None:
        nonlocal peak
        while time.monotonic() < deadline + 1:
            peak = max(peak, rss_bytes(gw.proc.pid))  # type: ignore[union-attr]
            await asyncio.sleep(0.1)

    try:
        await asyncio.gather(
            good_client(),
            logon_storm(),
            qrc_trickle(),
            http_slowloris(),
            huge_batches(),
            non_reader(),
            autopoll_and_groups(),
            wrong_tokens(),
            watch(),
        )
    finally:
        for item in held:
            item.close()
    assert gw.proc.poll() is None, "the gateway died"
    assert peak < MEMORY_LIMIT, f"RSS {peak / MiB:.0f} MiB"
    assert peak - baseline_rss < 120 * MiB, f"RSS grew {(peak - baseline_rss) / MiB:.0f} MiB"
    latencies.sort()
    assert len(latencies) > 20
    p95 = latencies[int(len(latencies) * 0.95)]
    assert p95 < 1.0, f"p95 latency of a normal client {p95:.3f} s under attack"
    assert gw.metric("qsys_gateway_upstream_sessions") <= 10


def _unauth_budget_large(config: dict[str, Any]) -> None:
    config["limits"].update(maxUnauthenticatedClients=64, maxUnauthenticatedClientsPerSource=16)


async def _post(
    http: aiohttp.ClientSession, url: str, token: str, method: str, params: Any
) -> tuple[int, Any]:
    async with http.post(
        f"{url}/v1/rpc",
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
        headers={"Authorization": f"Bearer {token}"},
        timeout=aiohttp.ClientTimeout(total=10),
    ) as r:
        return r.status, await r.read()
