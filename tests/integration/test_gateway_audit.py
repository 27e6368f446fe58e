"""Audit completeness and log hygiene of the real gateway process.

Every write and every denial has exactly one audit line; reads are not audited
unless `audit.logReads`; no token text appears anywhere in stdout or stderr;
every log line is a JSON object with ts, level, logger and message.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from gateway_harness import (
    ADMIN_TOKEN,
    ALL_TOKENS,
    PANEL_TOKEN,
    SLOW_TOKEN,
    GatewayFactory,
    assert_no_tokens,
)

from qsys_protocol.qrc.client import QrcClient

FIELDS = {
    "type",
    "ts",
    "requestId",
    "subject",
    "sourceIp",
    "transport",
    "method",
    "targets",
    "values",
    "decision",
    "reason",
    "outcome",
    "durationMs",
    "callId",
}
REPEAT_FIELDS = {
    "count",
    "callIds",
    "requestIds",
}  # only on a line that stands for repeated refusals
WRONG_TOKEN = "wrong-token-that-must-not-be-logged-0123456789"


def msg(method: str, params: Any, rid: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}


async def test_every_write_and_denial_audited_once_and_no_token_anywhere(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = await asyncio.to_thread(make_gateway, module_sim_port)
    expected: dict[str, tuple[str, str, str]] = {}  # requestId -> (decision, method, transport)
    reads: list[str] = []
    async with aiohttp.ClientSession() as http:

        async def post(token: str, body: Any, rid: str) -> int:
            headers = {"Authorization": f"Bearer {token}", "X-Request-ID": rid}
            async with http.post(f"{gw.url}/v1/rpc", json=body, headers=headers) as r:
                await r.read()
                return r.status

        gain = {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain", "Value": -12}]}
        assert await post(PANEL_TOKEN, msg("Component.Set", gain), "w-http-1") == 200
        expected["w-http-1"] = ("allow", "Component.Set", "http")
        assert (
            await post(
                ADMIN_TOKEN, msg("Control.Set", {"Name": "WelcomeText", "Value": "hi"}), "w-http-2"
            )
            == 200
        )
        expected["w-http-2"] = ("allow", "Control.Set", "http")
        too_loud = {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain", "Value": 10}]}
        assert await post(PANEL_TOKEN, msg("Component.Set", too_loud), "d-http-1") == 403
        expected["d-http-1"] = ("deny", "Component.Set", "http")
        assert await post(PANEL_TOKEN, msg("Control.Get", ["MainGain"]), "d-http-2") == 403
        expected["d-http-2"] = ("deny", "Control.Get", "http")
        assert await post(WRONG_TOKEN, msg("NoOp", {}), "d-http-3") == 401
        expected["d-http-3"] = ("deny", "Logon", "http")
        assert await post(PANEL_TOKEN, msg("Control.Get", ["LobbyMusicLevel"]), "r-http-1") == 200
        reads.append("r-http-1")
        assert await post(ADMIN_TOKEN, msg("StatusGet", 0), "r-http-2") == 200
        reads.append("r-http-2")
        # rate limited: the slow subject (burst 2) gets a 429 within a few calls
        statuses = [await post(SLOW_TOKEN, msg("NoOp", {}), f"rl-{i}") for i in range(5)]
        assert 429 in statuses
        for i, status in enumerate(statuses):
            if status == 429:
                expected[f"rl-{i}"] = ("deny", "NoOp", "http")
            else:
                reads.append(f"rl-{i}")
        # a batch: one write, one denial, one read, all under one request id
        batch = [
            msg("Control.Set", {"Name": "LobbyMusicLevel", "Value": -20}, 1),
            msg("Snapshot.Save", {"Name": "Room Presets", "Bank": 2}, 2),
            msg("Control.Get", ["LobbyMusicLevel"], 3),
        ]
        assert await post(ADMIN_TOKEN, batch, "b-http-1") == 200
        # WebSocket and QRC: one write and one denial each, plus a failed Logon
        headers = {"Authorization": f"Bearer {PANEL_TOKEN}"}
        async with http.ws_connect(gw.ws_url, headers=headers) as ws:
            mute = {"Name": "Room101 Zone2 Gain", "Controls": [{"Name": "mute", "Value": True}]}
            await ws.send_json(msg("Component.Set", mute, 1))
            await ws.send_json(msg("Snapshot.Save", {"Name": "Room Presets", "Bank": 1}, 2))
            seen: set[int] = set()
            async with asyncio.timeout(10):
                while seen != {1, 2}:
                    reply = await ws.receive_json()
                    if "id" in reply and "method" not in reply:
                        seen.add(reply["id"])
    qrc = await QrcClient.connect("127.0.0.1", gw.qrc_port)
    try:
        bad = await qrc.request("Logon", {"User": "panel", "Password": WRONG_TOKEN})
        assert bad.error is not None
        await qrc.call("Logon", {"User": "admin", "Password": ADMIN_TOKEN})
        await qrc.call("Control.Set", {"Name": "LobbyMusicOn", "Value": 0})
        denied = await qrc.request("PA.PageSubmit", {})
        assert denied.error is not None
        assert denied.error["code"] == -32601  # not modelled: named by no rule
        await qrc.call("Control.Get", ["LobbyMusicOn"])  # a read: not audited
    finally:
        await qrc.close()

    def rids(line: dict[str, Any]) -> list[str]:
        # Identical refusals in a burst are one line with a count and their request ids.
        return list(line.get("requestIds", [line["requestId"]]))

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        audited = {rid for line in gw.audit_lines() for rid in rids(line)}
        if set(expected) <= audited:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.2)  # anything else (that should not be there) has arrived too
    lines = gw.audit_lines()
    for line in lines:
        assert FIELDS <= set(line) <= FIELDS | REPEAT_FIELDS | {"token"}, line
        assert line.get("token", "current") == "current"  # no rotation here
        assert line["decision"] in ("allow", "deny")
    by_rid = Counter(rid for line in lines for rid in rids(line))
    for rid, (decision, method, transport) in expected.items():
        assert by_rid[rid] == 1, (rid, by_rid[rid])
        line = next(x for x in lines if rid in rids(x))
        assert (line["decision"], line["method"], line["transport"]) == (
            decision,
            method,
            transport,
        )
        assert line["sourceIp"] == "127.0.0.1"
    for rid in reads:
        assert by_rid[rid] == 0, rid
    write = next(x for x in lines if x["requestId"] == "w-http-1")
    assert write["targets"] == ["Room101 Zone1 Gain.gain"]
    assert write["values"] == [-12]
    assert write["subject"] == "panel"
    assert write["outcome"] == "ok"
    batch_lines = sorted(
        (x["method"], x["decision"]) for x in lines if x["requestId"] == "b-http-1"
    )
    assert batch_lines == [("Control.Set", "allow"), ("Snapshot.Save", "allow")]
    ws_lines = sorted((x["method"], x["decision"]) for x in lines if x["transport"] == "ws")
    assert ws_lines == [("Component.Set", "allow"), ("Snapshot.Save", "deny")]
    qrc_lines = sorted((x["method"], x["decision"]) for x in lines if x["transport"] == "qrc")
    assert qrc_lines == [("Control.Set", "allow"), ("Logon", "deny"), ("PA.PageSubmit", "deny")]
    # every audited call is one line, or counted in the line of its repeats
    assert sum(x.get("count", 1) for x in lines) == len(expected) + 2 + 2 + 3
    # the audit counter agrees with the lines written
    allow = await asyncio.to_thread(gw.metric, "qsys_gateway_audit_events_total", decision="allow")
    deny = await asyncio.to_thread(gw.metric, "qsys_gateway_audit_events_total", decision="deny")
    assert allow + deny == len(lines)
    # no token text anywhere, and every log line is structured
    stdout, stderr = gw.stdout(), gw.stderr()
    assert_no_tokens(stdout, stderr)
    assert WRONG_TOKEN not in stdout + stderr
    assert all(t[:16] not in stdout + stderr for t in ALL_TOKENS)
    logs = gw.log_lines()
    assert logs
    for line in logs:
        assert {"ts", "level", "logger", "message"} <= set(line), line
    assert any(line.get("request_id") == "d-http-3" for line in logs)


async def test_reads_audited_when_log_reads(
    module_sim_port: int, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    path = tmp_path / "audit.log"

    def edit_path(c: dict[str, Any]) -> None:
        c["audit"] = {"logReads": True, "path": str(path)}

    gw = await asyncio.to_thread(make_gateway, module_sim_port, edit_path)
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {PANEL_TOKEN}", "X-Request-ID": "read-1"}
        body = msg("Control.Get", ["LobbyMusicLevel"])
        async with http.post(f"{gw.url}/v1/rpc", json=body, headers=headers) as r:
            assert r.status == 200
    deadline = time.monotonic() + 10
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            if lines:
                break
        await asyncio.sleep(0.2)
    assert [(x["requestId"], x["method"], x["decision"]) for x in lines] == [
        ("read-1", "Control.Get", "allow")
    ]
    assert lines[0]["targets"] == ["LobbyMusicLevel"]
    assert gw.audit_lines() == []  # the file, not stdout
