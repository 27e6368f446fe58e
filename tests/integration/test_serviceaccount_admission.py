"""ServiceAccount subjects in admission: connections close when their token expires;
varying the Logon `User` buys no extra reviews.

The API server mints tokens of at least 10 minutes, so here the gateway runs in this
process with its TokenReview call answered by a stand-in (the real call is exercised in
tests/e2e/test_serviceaccount_gateway.py); sockets, transports, admission and the sweep
are the real ones."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from qsys_core_sim.server import CoreSimulator
from qsys_gateway.app import Gateway
from qsys_protocol.config import parse_config
from qsys_protocol.qrc.client import QrcClient
from qsys_protocol.qrc.errors import ErrorCode, QrcError
from qsys_testkit import LOOPBACK
from qsys_testkit.net import free_port

pytestmark = pytest.mark.timeout(60)

AUD = "room-gateway.rooms.svc"
PANEL = "system:serviceaccount:rooms:panel"


def part(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def projected(exp: float, sig: str = "c2ln") -> str:
    return f"{part({'alg': 'RS256'})}.{part({'aud': [AUD], 'exp': int(exp)})}.{sig}"


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    async with CoreSimulator(idle_timeout=None) as sim:
        config = parse_config(
            {
                "core": {"host": LOOPBACK, "port": sim.port},
                "listen": {
                    "host": LOOPBACK,
                    "http": free_port(),
                    "qrc": free_port(),
                    "metrics": free_port(),
                },
                "tokenReview": {"audience": AUD, "cacheSeconds": 300},
                "subjects": [
                    {"name": "panel", "serviceAccount": PANEL, "rules": [{"methods": ["*"]}]}
                ],
            }
        )
        gw = Gateway(config)
        reviewer = gw.runtime.token_review
        assert reviewer is not None
        calls: list[str] = []

        def review(token: str, audience: str, timeout: float) -> tuple[bool, str, list[str]]:
            calls.append(token)
            good = token.startswith(projected(0).split(".")[0]) and "forged" not in token
            return (good, PANEL if good else "", [audience] if good else [])

        reviewer._call = review
        gw.review_calls = calls  # type: ignore[attr-defined]
        await gw.start()
        try:
            yield gw
        finally:
            await gw.shutdown(grace=1)


async def test_connections_close_when_their_token_expires(gateway: Gateway) -> None:
    listen = gateway.runtime.config.listen
    assert listen.qrc is not None
    token = projected(time.time() + 3)
    qrc = await QrcClient.connect(LOOPBACK, listen.qrc)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            f"http://{LOOPBACK}:{listen.http}/v1/ws", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            assert await qrc.call("Logon", {"User": "panel", "Password": token}) is True
            assert (await qrc.call("StatusGet"))["State"] == "Active"
            await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "NoOp", "params": {}})
            opened = time.monotonic()
            await asyncio.wait_for(qrc.closed.wait(), 10)
            async with asyncio.timeout(10):
                while (await ws.receive()).type not in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                ):
                    pass
            assert 1.0 <= time.monotonic() - opened <= 8
        finally:
            await ws.close()
            await qrc.close()
    # a new connection with the expired token is refused before any review
    assert await logon_error(listen.qrc, token) == ErrorCode.UNAUTHENTICATED


async def logon_error(port: int, token: str) -> int:
    """The error code a Logon as `panel` with `token` gets on a new raw QRC socket."""
    qrc = await QrcClient.connect(LOOPBACK, port)
    try:
        with pytest.raises(QrcError) as info:
            await qrc.call("Logon", {"User": "panel", "Password": token})
        return info.value.code
    finally:
        await qrc.close()


async def test_varying_the_logon_user_buys_no_extra_reviews(gateway: Gateway) -> None:
    listen = gateway.runtime.config.listen
    assert listen.qrc is not None
    calls: list[str] = gateway.review_calls  # type: ignore[attr-defined]
    codes = []
    qrc = await QrcClient.connect(LOOPBACK, listen.qrc)
    try:
        for i in range(40):
            forged = projected(time.time() + 600, f"forged{i}")
            with pytest.raises(QrcError) as info:
                await qrc.call("Logon", {"User": f"user{i}", "Password": forged})
            codes.append(info.value.code)
    finally:
        await qrc.close()
    assert len(calls) == 10
    assert codes[:10] == [ErrorCode.UNAUTHENTICATED] * 10
    assert set(codes[10:]) == {ErrorCode.RATE_LIMITED}
    skipped = gateway.metrics.tokenreview_skipped.labels("throttled")._value.get()
    assert skipped == 30


async def test_a_token_without_exp_is_never_reviewed(gateway: Gateway) -> None:
    """Only tokens with an unexpired `exp` are reviewed (docs/security.md): one without it
    would otherwise hold its connection for ever; the stand-in admits anything asked."""
    listen = gateway.runtime.config.listen
    assert listen.qrc is not None
    calls: list[str] = gateway.review_calls  # type: ignore[attr-defined]
    timeless = f"{part({'alg': 'RS256'})}.{part({'aud': [AUD]})}.c2ln"
    for exp in (None, True, "4102444800"):
        token = (
            timeless
            if exp is None
            else f"{part({'alg': 'RS256'})}.{part({'aud': [AUD], 'exp': exp})}.c2ln"
        )
        assert await logon_error(listen.qrc, token) == ErrorCode.UNAUTHENTICATED
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://{LOOPBACK}:{listen.http}/v1/rpc",
            json={"jsonrpc": "2.0", "id": 1, "method": "NoOp", "params": {}},
            headers={"Authorization": f"Bearer {timeless}"},
        ) as resp,
    ):
        assert resp.status == 401
    assert calls == []
    # the same token with an exp is reviewed and admitted
    qrc = await QrcClient.connect(LOOPBACK, listen.qrc)
    try:
        token = projected(time.time() + 600)
        assert await qrc.call("Logon", {"User": "panel", "Password": token}) is True
    finally:
        await qrc.close()
    assert len(calls) == 1
