"""HTTP transport of the real gateway: error codes and statuses, headers, CORS, probes, policy."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest
from gateway_harness import ADMIN_TOKEN, NORULES_TOKEN, PANEL_TOKEN, SLOW_TOKEN, assert_no_tokens
from multidict import CIMultiDictProxy

from qsys_testkit import GatewayProcess

Headers = CIMultiDictProxy[str]

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def call(method: str, params: Any = None, rid: int | str | None = 1) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if rid is not None:
        msg["id"] = rid
    if params is not None:
        msg["params"] = params
    return msg


async def rpc(
    http: aiohttp.ClientSession,
    gw: GatewayProcess,
    token: str | None,
    body: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Headers]:
    h = {"Authorization": f"Bearer {token}"} if token else {}
    h["Content-Type"] = "application/json"
    h.update(headers or {})
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(f"{gw.url}/v1/rpc", data=data, headers=h) as r:
        text = await r.text()
        return r.status, (json.loads(text) if text else None), r.headers


def assert_security_headers(headers: Headers, *, hsts: bool = False) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name
    csp = headers.get("Content-Security-Policy", "")
    assert "default-src 'none'" in csp
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", headers.get("X-Request-ID", ""))
    assert ("Strict-Transport-Security" in headers) is hsts


async def other_source(source: str) -> aiohttp.ClientSession:
    """A client whose connections come from another loopback address (auth throttling is per IP)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(source, 0)),
        timeout=aiohttp.ClientTimeout(total=30),
    )


# -- error codes and statuses -------------------------------------------------------


async def test_ok_call_is_200(shared_gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    status, body, headers = await rpc(http, shared_gateway, ADMIN_TOKEN, call("StatusGet"))
    assert status == 200, body
    assert body["id"] == 1
    assert body["result"]["State"] == "Active"
    assert_security_headers(headers)


@pytest.mark.parametrize("token", [None, "not-a-valid-token", ""])
async def test_unauthenticated_is_401(shared_gateway: GatewayProcess, token: str | None) -> None:
    async with await other_source("127.0.0.21") as http:
        status, body, headers = await rpc(http, shared_gateway, token, call("NoOp"))
    assert status == 401
    assert body["error"]["code"] == -32001
    assert_security_headers(headers)


async def test_forbidden_is_403(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await rpc(
        http,
        shared_gateway,
        PANEL_TOKEN,
        call("Snapshot.Save", {"Name": "Room Presets", "Bank": 1}),
    )
    assert status == 403
    assert body["error"]["code"] == -32003
    assert "Snapshot.Save" in body["error"]["message"]


async def test_rate_limited_is_429_with_retry_after(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    statuses = []
    last: tuple[int, Any, Headers] | None = None
    for i in range(6):
        last = await rpc(http, shared_gateway, SLOW_TOKEN, call("NoOp", {}, i))
        statuses.append(last[0])
        if last[0] == 429:
            break
    assert last is not None
    assert last[0] == 429, statuses
    assert last[1]["error"]["code"] == -32029
    assert int(last[2]["Retry-After"]) >= 1


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"\xff\xfe\x00", b'{"jsonrpc": "2.0", "id": 1, "method": "NoOp"'],
)
async def test_malformed_json_is_400_parse_error(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession, body: bytes
) -> None:
    status, resp, headers = await rpc(http, shared_gateway, ADMIN_TOKEN, body)
    assert status == 400
    assert resp["error"]["code"] == -32700
    assert_security_headers(headers)


async def test_deep_nesting_is_refused_cleanly(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    status, resp, _ = await rpc(http, shared_gateway, ADMIN_TOKEN, deep)
    assert status == 400
    assert resp["error"]["code"] in (-32700, -32600)
    nested: Any = 1
    for _ in range(200):
        nested = {"a": nested}
    status, resp, _ = await rpc(
        http, shared_gateway, ADMIN_TOKEN, call("Component.Set", {"Name": nested})
    )
    assert status == 400
    assert resp["error"]["code"] == -32602


@pytest.mark.parametrize(
    "body",
    [
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "1.0", "id": 1, "method": "NoOp"},
        {"jsonrpc": "2.0", "id": 1, "method": 42},
        {"jsonrpc": "2.0", "id": {"x": 1}, "method": "NoOp"},
        "just a string",
        17,
        [],
    ],
)
async def test_invalid_request_is_400(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession, body: Any
) -> None:
    status, resp, _ = await rpc(http, shared_gateway, ADMIN_TOKEN, body)
    assert status == 400, resp
    assert resp["error"]["code"] == -32600


async def test_unknown_method_is_404(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    # allowed by an exact rule, forwarded unchanged, and the Core does not know it
    status, resp, _ = await rpc(
        http, shared_gateway, ADMIN_TOKEN, call("Mixer.SetInputGain", {"Name": "x"})
    )
    assert status == 404
    assert resp["error"]["code"] == -32601


@pytest.mark.parametrize(
    "params",
    [
        {"Name": 5, "Controls": [{"Name": "gain", "Value": -10}]},
        {"Name": "Room101 Zone1 Gain", "Controls": "gain"},
        {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain", "Value": [1]}]},
        ["Room101 Zone1 Gain"],
    ],
)
async def test_wrong_types_are_400_invalid_params(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession, params: Any
) -> None:
    status, resp, _ = await rpc(http, shared_gateway, ADMIN_TOKEN, call("Component.Set", params))
    assert status == 400, resp
    assert resp["error"]["code"] == -32602


async def test_oversized_body_is_413(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    big = call("Control.Set", {"Name": "WelcomeText", "Value": "x" * 70000})
    status, _, headers = await rpc(http, shared_gateway, ADMIN_TOKEN, big)
    assert status == 413
    assert_security_headers(headers)


async def test_core_errors_pass_through_in_200(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    status, resp, _ = await rpc(
        http,
        shared_gateway,
        ADMIN_TOKEN,
        call("Component.Get", {"Name": "No Such Component", "Controls": [{"Name": "gain"}]}),
    )
    assert status == 200
    assert resp["error"]["code"] == 7
    status, resp, _ = await rpc(http, shared_gateway, ADMIN_TOKEN, call("Control.Get", ["Nope"]))
    assert status == 200
    assert resp["error"]["code"] == 8


async def test_notification_gets_204(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    status, resp, headers = await rpc(http, shared_gateway, ADMIN_TOKEN, call("NoOp", rid=None))
    assert status == 204
    assert resp is None
    assert "X-Request-ID" in headers


async def test_no_stack_trace_in_any_error(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    for body in (b"{", b"[" * 3000, json.dumps(call("Component.Set", [1, 2])).encode()):
        _, resp, _ = await rpc(http, shared_gateway, ADMIN_TOKEN, body)
        text = json.dumps(resp)
        assert "Traceback" not in text
        assert 'File "' not in text


# -- batches ------------------------------------------------------------------------


async def test_batch_each_call_gets_its_own_result(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    batch = [
        call("NoOp", {}, 1),
        call("Snapshot.Save", {"Name": "Room Presets", "Bank": 1}, 2),
        call("Component.Set", {"Name": 5}, 3),
        call("Control.Get", ["LobbyMusicLevel"], 4),
        call("NoOp", {}, None),
        {"jsonrpc": "2.0", "id": 6},
    ]
    status, resp, _ = await rpc(http, shared_gateway, PANEL_TOKEN, batch)
    assert status == 200
    by_id = {r["id"]: r for r in resp}
    assert len(resp) == 5
    assert by_id[1]["result"] is True
    assert by_id[2]["error"]["code"] == -32003
    assert by_id[3]["error"]["code"] == -32602
    assert by_id[4]["result"][0]["Name"] == "LobbyMusicLevel"
    assert by_id[6]["error"]["code"] == -32600


async def test_batch_auth_rate_and_size_decided_for_whole_request(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    batch = [call("NoOp", {}, i) for i in range(3)]
    async with await other_source("127.0.0.22") as other:
        status, resp, _ = await rpc(other, shared_gateway, "wrong", batch)
    assert status == 401
    assert resp["error"]["code"] == -32001
    # slow subject: burst 2, a batch of 3 is refused as a whole
    status, resp, headers = await rpc(http, shared_gateway, SLOW_TOKEN, batch)
    assert status == 429
    assert resp["error"]["code"] == -32029
    assert "Retry-After" in headers
    big = [call("Control.Set", {"Name": "WelcomeText", "Value": "y" * 2000}, i) for i in range(40)]
    status, _, _ = await rpc(http, shared_gateway, ADMIN_TOKEN, big)
    assert status == 413
    status, resp, _ = await rpc(http, shared_gateway, ADMIN_TOKEN, [call("NoOp", {}, None)])
    assert status == 204


# -- every rule dimension -------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "msg", "allowed"),
    [
        # method
        (PANEL_TOKEN, call("NoOp", {}), True),
        (PANEL_TOKEN, call("Snapshot.Save", {"Name": "Room Presets", "Bank": 1}), False),
        (NORULES_TOKEN, call("NoOp", {}), False),
        # component (and snapshot names against components)
        (PANEL_TOKEN, call("Snapshot.Load", {"Name": "Room Presets", "Bank": 1}), True),
        (ADMIN_TOKEN, call("Snapshot.Save", {"Name": "Room Presets", "Bank": 1}), True),
        (PANEL_TOKEN, call("Snapshot.Load", {"Name": "Venue Scenes", "Bank": 1}), False),
        (
            PANEL_TOKEN,
            call("Component.Get", {"Name": "Room101 Zone2 Gain", "Controls": [{"Name": "gain"}]}),
            True,
        ),
        (
            PANEL_TOKEN,
            call("Component.Get", {"Name": "Room102 Zone1 Gain", "Controls": [{"Name": "gain"}]}),
            False,
        ),
        # control
        (
            PANEL_TOKEN,
            call(
                "Component.Get",
                {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain"}, {"Name": "invert"}]},
            ),
            False,
        ),
        (PANEL_TOKEN, call("Control.Get", ["LobbyMusicLevel", "LobbyMusicOn"]), True),
        (PANEL_TOKEN, call("Control.Get", ["LobbyMusicLevel", "MainGain"]), False),
        # valueRange
        (
            PANEL_TOKEN,
            call(
                "Component.Set",
                {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain", "Value": -10}]},
            ),
            True,
        ),
        (
            PANEL_TOKEN,
            call(
                "Component.Set",
                {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain", "Value": -70}]},
            ),
            False,
        ),
        (
            PANEL_TOKEN,
            call(
                "Component.Set",
                {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain", "Value": 6}]},
            ),
            False,
        ),
        (
            PANEL_TOKEN,
            call(
                "Component.Set",
                {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain", "Position": 0.5}]},
            ),
            False,
        ),
        (
            PANEL_TOKEN,
            call(
                "Component.Set",
                {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "mute", "Value": True}]},
            ),
            True,
        ),
        # other methods: only an exact rule name allows them; "*" never does (-32601)
        (ADMIN_TOKEN, call("PA.PageSubmit", {"Zones": [1]}), None),
        (PANEL_TOKEN, call("Mixer.SetInputGain", {"Name": "x"}), None),
    ],
)
async def test_rule_dimensions(
    shared_gateway: GatewayProcess,
    http: aiohttp.ClientSession,
    token: str,
    msg: dict[str, Any],
    allowed: bool | None,
) -> None:
    status, resp, _ = await rpc(http, shared_gateway, token, msg)
    if allowed is None:
        # not modelled and named by no rule: what a Core answers for an unknown method,
        # with the rule that would forward it
        assert status == 404, resp
        assert resp["error"]["code"] == -32601
        assert f'methods: ["{msg["method"]}"]' in resp["error"]["message"]
    elif allowed:
        # allowed calls reach the Core (which may still refuse them on its own terms)
        assert status != 403, resp
        assert resp.get("error", {}).get("code") != -32003, resp
    else:
        assert status == 403, resp
        assert resp["error"]["code"] == -32003


# -- headers, CORS, probes, status, metrics ------------------------------------------


async def test_security_headers_and_request_id_on_every_response(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    for method, path in [
        ("GET", "/livez"),
        ("GET", "/readyz"),
        ("GET", "/healthz"),
        ("GET", "/v1/status"),
        ("GET", "/nope"),
        ("DELETE", "/v1/rpc"),
        ("POST", "/v1/rpc"),
        ("GET", "/v1/ws"),
    ]:
        async with http.request(method, f"{shared_gateway.url}{path}") as r:
            await r.read()
            assert r.status < 500, (method, path, r.status)
            assert_security_headers(r.headers)
    async with http.get(
        f"{shared_gateway.url}/livez", headers={"X-Request-ID": "trace-abc.123"}
    ) as r:
        assert r.headers["X-Request-ID"] == "trace-abc.123"
    async with http.get(
        f"{shared_gateway.url}/livez", headers={"X-Request-ID": "bad id\twith junk"}
    ) as r:
        assert r.headers["X-Request-ID"] != "bad id\twith junk"


async def test_cors(shared_gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    good = {"Origin": "https://panel.example"}
    status, _, headers = await rpc(http, shared_gateway, ADMIN_TOKEN, call("NoOp", {}), good)
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "https://panel.example"
    assert "X-Request-ID" in headers["Access-Control-Expose-Headers"]
    bad = {"Origin": "https://evil.example"}
    status, _resp, headers = await rpc(http, shared_gateway, ADMIN_TOKEN, call("NoOp", {}), bad)
    assert status == 403
    assert "Access-Control-Allow-Origin" not in headers
    assert_security_headers(headers)
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with http.options(f"{shared_gateway.url}/v1/rpc", headers={**good, **preflight}) as r:
        assert r.status in (200, 204)
        assert r.headers["Access-Control-Allow-Origin"] == "https://panel.example"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
        assert_security_headers(r.headers)
    async with http.options(f"{shared_gateway.url}/v1/rpc", headers={**bad, **preflight}) as r:
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers
    async with http.get(f"{shared_gateway.url}/v1/ws", headers=bad) as r:
        assert r.status == 403


async def test_probes_when_core_is_up(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{shared_gateway.url}/livez") as r:
        assert r.status == 200
    async with http.get(f"{shared_gateway.url}/readyz") as r:
        assert r.status == 200
    async with http.get(f"{shared_gateway.url}/healthz") as r:
        assert r.status == 200
        body = await r.json()
    assert body["status"] == "healthy"
    assert set(body["components"]) == {"upstream", "config", "rateLimitStorage"}


async def test_status_needs_a_valid_token(shared_gateway: GatewayProcess) -> None:
    async with await other_source("127.0.0.23") as http:
        async with http.get(f"{shared_gateway.url}/v1/status") as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == -32001
        async with http.get(
            f"{shared_gateway.url}/v1/status", headers={"Authorization": "Bearer nope"}
        ) as r:
            assert r.status == 401
        async with http.get(
            f"{shared_gateway.url}/v1/status", headers={"Authorization": f"Bearer {NORULES_TOKEN}"}
        ) as r:
            assert r.status == 200
            body = await r.json()
            text = await r.text()
    assert body["core"]["State"] == "Active"
    assert body["upstream"]["up"] is True
    assert_no_tokens(text)


async def test_auth_failures_are_throttled_per_source(shared_gateway: GatewayProcess) -> None:
    async with await other_source("127.0.0.24") as http:
        statuses = [
            (await rpc(http, shared_gateway, f"wrong-{i}", call("NoOp", {})))[0] for i in range(12)
        ]
        assert statuses[:10] == [401] * 10
        _, resp, headers = await rpc(http, shared_gateway, "wrong-again", call("NoOp", {}))
        # A correct token from the same (NAT-shared) address is never punished.
        status, _, _ = await rpc(http, shared_gateway, ADMIN_TOKEN, call("NoOp", {}))
    assert statuses[-1] == 429
    assert resp["error"]["code"] == -32029
    assert int(headers["Retry-After"]) >= 1
    assert status == 200


async def test_metrics_names_and_bounded_labels(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    for method in ("Foo.Bar", "Totally.Unknown.Method", "x" * 100):
        await rpc(http, shared_gateway, ADMIN_TOKEN, call(method, {}))
    await rpc(http, shared_gateway, ADMIN_TOKEN, call("StatusGet"))
    text = await asyncio.to_thread(shared_gateway.metrics_text)
    for name in [
        "qsys_gateway_requests_total",
        "qsys_gateway_request_duration_seconds_bucket",
        "qsys_gateway_upstream_up",
        "qsys_gateway_upstream_reconnects_total",
        "qsys_gateway_upstream_request_duration_seconds_bucket",
        "qsys_gateway_clients",
        "qsys_gateway_auth_failures_total",
        "qsys_gateway_circuit_state",
        "qsys_gateway_config_reloads_total",
        "qsys_gateway_audit_events_total",
        "qsys_gateway_change_groups",
    ]:
        assert re.search(rf"^{name}[{{ ]", text, re.M), name
    assert "Foo.Bar" not in text
    assert "Totally.Unknown" not in text
    assert "xxxxxxxx" not in text
    assert (
        shared_gateway.metric("qsys_gateway_requests_total", method="other", subject="admin") >= 3
    )
    assert shared_gateway.metric("qsys_gateway_upstream_up") == 1
    methods = set(re.findall(r'method="([^"]*)"', text))
    assert len(methods) < 40, methods
    assert_no_tokens(text)


async def test_slowloris_does_not_starve_other_clients(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    writers = []
    try:
        for _ in range(20):
            _, w = await asyncio.open_connection("127.0.0.1", shared_gateway.http_port)
            w.write(b"POST /v1/rpc HTTP/1.1\r\nHost: x\r\n")
            writers.append(w)
        for i in range(3):
            for w in writers:
                w.write(f"X-Slow-{i}: a\r\n".encode())
            status, _, _ = await asyncio.wait_for(
                rpc(http, shared_gateway, ADMIN_TOKEN, call("NoOp", {})), 5
            )
            assert status == 200
            await asyncio.sleep(0.3)
    finally:
        for w in writers:
            w.close()
