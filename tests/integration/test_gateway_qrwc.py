"""QRWC (`/qrc-public-api/v0`) through the real gateway, driven by the vendor's own SDK.

`tests/js/qrwc_client.mjs` runs `@q-sys/qrwc` (installed by `make js-deps` from the
pinned tests/js/package-lock.json) under Node against the gateway, which forwards
to the simulator; these tests assert on the JSON lines it prints and on the
gateway's audit and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gateway_harness import ADMIN_TOKEN, PANEL_TOKEN, base_config, self_signed_cert

from qsys_testkit import LOOPBACK, GatewayProcess, SimulatorProcess, token_sha256

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SCRIPT = JS_DIR / "qrwc_client.mjs"

QRWC_TOKEN = "qrw-5c1d9e7f3a2b4c6d8e0f1a3b5c7d9e55"
ZONE1, ZONE2 = "Room101 Zone1 Gain", "Room101 Zone2 Gain"

QRWC_SUBJECT: dict[str, Any] = {
    "name": "venue-panel",
    "tokenSha256": token_sha256(QRWC_TOKEN),
    "rules": [
        {"methods": ["NoOp", "StatusGet", "Component.GetComponents", "ChangeGroup.*"]},
        {
            "methods": [
                "Component.GetControls",
                "Component.Get",
                "ChangeGroup.AddComponentControl",
            ],
            "components": ["Room101 Zone*"],
        },
        {"methods": ["Component.Set"], "components": [ZONE1], "controls": ["gain", "mute"]},
    ],
}


def with_qrwc_subject(config: dict[str, Any]) -> None:
    config["subjects"].append(QRWC_SUBJECT)


def node() -> str:
    binary = shutil.which("node")
    if binary is None:
        pytest.fail("node is not installed: run make install (hack/install-system-deps.sh)")
    if not (JS_DIR / "node_modules" / "@q-sys" / "qrwc").is_dir():
        pytest.fail("@q-sys/qrwc is not installed: run make js-deps")
    return binary


def qrwc_url(gw: GatewayProcess) -> str:
    scheme = "wss" if gw.tls else "ws"
    return f"{scheme}://{LOOPBACK}:{gw.http_port}/qrc-public-api/v0"


class SdkRun:
    """One `node qrwc_client.mjs` process; every line it prints is one JSON event."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []

    async def next(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            stderr = await self.proc.stderr.read() if self.proc.stderr else b""
            raise AssertionError(f"SDK script ended early; stderr: {stderr.decode()[-2000:]}")
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        assert event["event"] not in ("failed", "timeout"), event
        return event

    async def until(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next(timeout)
                if event["event"] == name:
                    return event


@contextlib.asynccontextmanager
async def sdk(
    gw: GatewayProcess,
    auth: str,
    token: str,
    node_env: dict[str, str] | None = None,
    **settings: Any,
) -> AsyncIterator[SdkRun]:
    env = {
        **os.environ,
        **(node_env or {}),
        "QRWC_AUTH": auth,
        "QRWC_TOKEN": token,
        **{
            f"QRWC_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
            for k, v in settings.items()
        },
    }
    proc = await asyncio.create_subprocess_exec(
        node(),
        str(SCRIPT),
        qrwc_url(gw),
        cwd=JS_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    run = SdkRun(proc)
    try:
        yield run
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()


async def admin_set(
    http: aiohttp.ClientSession, gw: GatewayProcess, component: str, control: str, value: Any
) -> None:
    """Another client writes through the gateway's HTTP API."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "Component.Set",
        "params": {"Name": component, "Controls": [{"Name": control, "Value": value}]},
    }
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.post(f"{gw.url}/v1/rpc", json=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["result"] is True


@pytest.fixture(scope="module")
def qrwc_gateway(module_sim: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = base_config(module_sim.port)
    with_qrwc_subject(config)
    gw = GatewayProcess(config, tmp_path_factory.mktemp("qrwc"))
    try:
        yield gw.start()
    finally:
        gw.stop()


async def test_sdk_reads_writes_and_receives_updates(
    qrwc_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    gw = qrwc_gateway
    await admin_set(http, gw, ZONE1, "mute", 0)
    async with sdk(
        gw,
        "header",
        QRWC_TOKEN,
        write={"component": ZONE1, "control": "gain", "value": -12},
        denied={"component": ZONE2, "control": "gain", "value": -6},
        watch={"component": ZONE1, "control": "mute", "value": 1},
    ) as run:
        connected = await run.until("connected")
        status = connected["engineStatus"]
        assert status["State"] == "Active"
        assert status["DesignName"]
        components = connected["components"]
        # Controls (with their types and ranges) of every component the policy lets it read.
        assert set(components[ZONE1]) == {"gain", "mute", "invert", "bypass"}
        gain = components[ZONE1]["gain"]
        assert (gain["Type"], gain["ValueMin"], gain["ValueMax"]) == ("Float", -100, 20)
        assert gain["Direction"] == "Read/Write"
        assert components[ZONE2]
        # Only the components it may read are listed (Component.GetComponents is cut to
        # them on every transport), so the SDK asks for no controls it would be refused.
        assert all(name.startswith("Room101 Zone") for name in components), sorted(components)
        assert "Room102 Zone1 Gain" not in components

        written = await run.until("write")
        assert written["errors"] == []
        assert written["state"]["Value"] == -12
        assert written["state"]["Component"] == ZONE1

        denied = await run.until("denied")
        assert len(denied["errors"]) == 1
        assert "-32003" in denied["errors"][0]
        assert denied["state"]["Value"] != -6

        await run.until("ready")
        await admin_set(http, gw, ZONE1, "mute", 1)
        update = await run.until("update")
        assert update["state"]["Value"] == 1
        assert update["state"]["Bool"] is True
        done = await run.until("done")
        # The only error the SDK saw: the refused write. (Qrwc logs its 'error' events too,
        # so the refusal may appear twice.)
        refused = set(done["errors"])
        assert len(refused) == 1, refused
        assert "-32003" in refused.pop()
        assert await run.proc.wait() == 0

    # The write went to the Core, and both it and the refusal are audited as `qrwc`.
    check = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "Component.Get",
        "params": {"Name": ZONE1, "Controls": [{"Name": "gain"}]},
    }
    async with http.post(
        f"{gw.url}/v1/rpc", json=check, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as r:
        assert (await r.json())["result"]["Controls"][0]["Value"] == -12
    audit = [a for a in gw.audit_lines() if a["transport"] == "qrwc"]
    writes = [a for a in audit if a["method"] == "Component.Set"]
    assert {(a["decision"], a["targets"][0]) for a in writes} == {
        ("allow", f"{ZONE1}.gain"),
        ("deny", f"{ZONE2}.gain"),
    }
    assert all(a["subject"] == "venue-panel" for a in audit)
    # The refused write is the only refusal: no Component.GetControls of a component it
    # may not read was asked for.
    assert (
        gw.metric(
            "qsys_gateway_requests_total", transport="qrwc", subject="venue-panel", outcome="denied"
        )
        == 1
    )
    assert (
        gw.metric("qsys_gateway_requests_total", transport="qrwc", method="ChangeGroup.Poll") >= 1
    )
    assert QRWC_TOKEN not in gw.stdout() + gw.stderr()


@pytest.mark.parametrize("auth", ["apikey", "logon"])
async def test_sdk_with_api_key_or_first_logon(qrwc_gateway: GatewayProcess, auth: str) -> None:
    async with sdk(
        qrwc_gateway,
        auth,
        QRWC_TOKEN,
        user="venue-panel",
        write={"component": ZONE1, "control": "mute", "value": True},
    ) as run:
        if auth == "logon":
            assert (await run.until("logon"))["ok"] is True
        connected = await run.until("connected")
        assert set(connected["components"][ZONE1]) == {"gain", "mute", "invert", "bypass"}
        written = await run.until("write")
        assert written["errors"] == []
        assert written["state"]["Value"] == 1
        await run.until("done")
        assert await run.proc.wait() == 0
    assert QRWC_TOKEN not in qrwc_gateway.stdout() + qrwc_gateway.stderr()


async def test_sdk_without_credentials_is_refused(qrwc_gateway: GatewayProcess) -> None:
    async with sdk(qrwc_gateway, "none", "") as run:
        assert run.proc.stdout is not None
        line = await asyncio.wait_for(run.proc.stdout.readline(), 30)
        event = json.loads(line)
        # StatusGet, the SDK's first call, is refused: the SDK gives up as with a Core that says no.
        assert event["event"] == "failed"
        assert "initial status check failed" in event["error"]


async def ws_call(ws: aiohttp.ClientWebSocketResponse, msg: dict[str, Any]) -> dict[str, Any]:
    await ws.send_json(msg)
    async with asyncio.timeout(10):
        while True:
            got = json.loads((await ws.receive()).data)
            if got.get("id") == msg["id"]:
                return dict(got)


@contextlib.asynccontextmanager
async def raw_qrwc(
    gw: GatewayProcess, source: str
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A plain WebSocket to the QRWC path from its own loopback address (own auth throttle)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.ws_connect(qrwc_url(gw)) as ws,
    ):
        yield ws


async def test_api_key_is_checked_on_every_request(qrwc_gateway: GatewayProcess) -> None:
    gw = qrwc_gateway
    async with raw_qrwc(gw, "127.0.0.41") as ws:
        req = {"jsonrpc": "2.0", "method": "StatusGet"}
        # No key, no Logon yet: refused.
        assert (await ws_call(ws, {**req, "id": 1}))["error"]["code"] == -32001
        ok = await ws_call(ws, {**req, "id": 2, "apiKey": QRWC_TOKEN})
        assert ok["result"]["State"] == "Active"
        # Once logged on, requests without a key run as the connection's subject.
        assert "result" in await ws_call(ws, {**req, "id": 3})
        # Another subject's valid key is refused (one subject per connection) ...
        other = await ws_call(ws, {**req, "id": 4, "apiKey": PANEL_TOKEN})
        assert other["error"]["code"] == -32001
        assert "another subject" in other["error"]["message"]
        # ... and so is a wrong key; neither ends the connection.
        assert (await ws_call(ws, {**req, "id": 5, "apiKey": "wrong"}))["error"]["code"] == -32001
        assert "result" in await ws_call(ws, {**req, "id": 6, "apiKey": QRWC_TOKEN})
    denials = [
        a
        for a in gw.audit_lines()
        if a["transport"] == "qrwc" and a["sourceIp"] == "127.0.0.41" and a["decision"] == "deny"
    ]
    assert {a["subject"] for a in denials} == {"-", "venue-panel"}
    for secret in (QRWC_TOKEN, PANEL_TOKEN):
        assert secret not in gw.stdout() + gw.stderr()


async def test_bad_authorization_header_is_refused_at_handshake(
    qrwc_gateway: GatewayProcess,
) -> None:
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.42", 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(qrwc_url(qrwc_gateway), headers={"Authorization": "Bearer nope"})
        assert err.value.status == 401
    assert qrwc_gateway.metric("qsys_gateway_auth_failures_total", transport="qrwc") >= 1


async def test_sdk_over_tls(
    module_sim: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """wss://, as the SDK reaches a Core on 443; Node trusts the test CA via NODE_EXTRA_CA_CERTS."""
    directory = tmp_path_factory.mktemp("qrwc-tls")
    cert, key = self_signed_cert(directory)
    config = base_config(module_sim.port)
    config["listen"]["tls"] = {"certFile": str(cert), "keyFile": str(key)}
    with_qrwc_subject(config)
    gw = GatewayProcess(config, directory)
    try:
        await asyncio.to_thread(gw.start)
        async with sdk(
            gw,
            "header",
            QRWC_TOKEN,
            node_env={"NODE_EXTRA_CA_CERTS": str(cert)},
            write={"component": ZONE1, "control": "gain", "value": -9},
        ) as run:
            connected = await run.until("connected")
            assert set(connected["components"][ZONE1]) == {"gain", "mute", "invert", "bypass"}
            written = await run.until("write")
            assert written["errors"] == []
            assert written["state"]["Value"] == -9
            await run.until("done")
            assert await run.proc.wait() == 0
    finally:
        await asyncio.to_thread(gw.stop)


async def test_bad_input_on_qrwc(qrwc_gateway: GatewayProcess) -> None:
    gw = qrwc_gateway
    async with raw_qrwc(gw, "127.0.0.43") as ws:
        await ws.send_str("{not json")
        assert json.loads((await ws.receive(10)).data)["error"]["code"] == -32700
        # A key that is not a string is refused like a wrong one.
        refused = await ws_call(ws, {"jsonrpc": "2.0", "id": 1, "method": "NoOp", "apiKey": 7})
        assert refused["error"]["code"] == -32001
        # A batch whose calls each carry the key: each is checked, all run.
        batch: list[dict[str, Any]] = [
            {"jsonrpc": "2.0", "id": i, "method": "NoOp", "params": {}, "apiKey": QRWC_TOKEN}
            for i in (10, 11)
        ]
        await ws.send_json(batch)
        got: dict[int, Any] = {}
        async with asyncio.timeout(10):
            while len(got) < 2:
                msg = json.loads((await ws.receive()).data)
                if msg.get("id") in (10, 11):
                    got[msg["id"]] = msg
        assert got[10]["result"] is True
        assert got[11]["result"] is True
        # A frame over maxMessageBytes closes the socket (1009), as on /v1/ws.
        await ws.send_str(
            json.dumps({"jsonrpc": "2.0", "id": 9, "method": "NoOp", "pad": "z" * 70000})
        )
        msg = await ws.receive(10)
        while msg.type == aiohttp.WSMsgType.TEXT:
            msg = await ws.receive(10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1009
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/readyz") as r:
        assert r.status == 200


async def test_sdk_copies_a_whole_control_state(
    qrwc_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    """The SDK README's `control.update(other.state)`: a whole control state (Type,
    ValueMin, Direction, ...) is a write; a Core ignores what it does not know, and so
    does the gateway, which forwards only the validated fields."""
    await admin_set(http, qrwc_gateway, ZONE2, "gain", -17)
    async with sdk(
        qrwc_gateway,
        "header",
        QRWC_TOKEN,
        copy={
            "from": {"component": ZONE2, "control": "gain"},
            "to": {"component": ZONE1, "control": "gain"},
        },
    ) as run:
        copied = await run.until("copy")
        assert {"Type", "ValueMin", "ValueMax", "Direction"} <= set(copied["sent"])
        assert copied["errors"] == []
        assert copied["state"]["Value"] == -17
        assert (await run.until("done"))["errors"] == []


async def test_sdk_start_up_of_hundreds_of_calls_under_default_limits(
    tmp_path: Path,
) -> None:
    """Under the default rate limit (no `rate` in the config) the SDK's start-up, sent all
    at once, succeeds: GetComponents, one GetControls per component and one
    AddComponentControl per control, 1 + 40 + 280 = 321 calls, and every control
    registers."""
    design = {
        "name": "Many Rooms",
        "code": "SIMmany0001",
        "components": [
            {
                "name": f"Room{i:03d} Gain",
                "type": "gain",
                "controls": [
                    {"name": "gain", "type": "Float", "value": -20, "min": -100, "max": 20},
                    {"name": "mute", "type": "Boolean"},
                    {"name": "invert", "type": "Boolean"},
                    {"name": "bypass", "type": "Boolean"},
                    {"name": "trim", "type": "Float", "min": -12, "max": 12},
                    {"name": "select", "type": "Integer", "max": 4},
                    {"name": "label", "type": "Text", "value": "room"},
                ],
            }
            for i in range(40)
        ],
    }
    (tmp_path / "design.yaml").write_text(json.dumps(design))
    with SimulatorProcess("--design", str(tmp_path / "design.yaml")) as sim:
        config = base_config(sim.port)
        del config["limits"]["rate"]  # the defaults are under test
        config["subjects"].append(
            {
                "name": "venue-panel",
                "tokenSha256": token_sha256(QRWC_TOKEN),
                "rules": [
                    {
                        "methods": [
                            "NoOp",
                            "StatusGet",
                            "Component.GetComponents",
                            "Component.GetControls",
                            "Component.Get",
                            "ChangeGroup.*",
                        ]
                    }
                ],
            }
        )
        (tmp_path / "gw").mkdir()
        with GatewayProcess(config, tmp_path / "gw") as gw:
            async with sdk(gw, "header", QRWC_TOKEN, summary="1", timeout_ms="60000") as run:
                connected = await run.until("connected", timeout=60)
                assert connected["components"] == {f"Room{i:03d} Gain": 7 for i in range(40)}
                assert (await run.until("done", timeout=60))["errors"] == []
            limited = gw.metric(
                "qsys_gateway_requests_total", subject="venue-panel", outcome="rate_limited"
            )
            assert limited == 0
            calls = gw.metric("qsys_gateway_requests_total", subject="venue-panel")
            assert calls >= 321
