"""ServiceAccount subjects at the gateway, against a real API server: a real gateway
process on loopback reviews projected tokens minted by the TokenRequest API with the
TokenReview API, as a ServiceAccount whose ClusterRole allows only that (as in its pod).

The operator side (AccessPolicy `serviceAccount`, RBAC rendering, real pods) is tested
in the operator's e2e tests; this file is the gateway's half of the contract
(SA-INTERFACE: `subjects[].serviceAccount`, `tokenReview`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from qsys_protocol.qrc.client import QrcClient
from qsys_protocol.qrc.errors import ErrorCode, QrcError
from qsys_testkit import SimulatorProcess
from qsys_testkit.cluster import Cluster, must, token_kubeconfig, wait_for
from qsys_testkit.gateway import GatewayProcess, gateway_config
from qsys_testkit.net import free_port

pytestmark = pytest.mark.e2e

AUDIENCE = "room-gateway.e2e.svc"
CACHE_S = 4
REVIEWS = "qsys_gateway_tokenreview_total"


@dataclass
class Env:
    cluster: Cluster
    ns: str
    gw: GatewayProcess
    kubeconfig: Path

    def account(self, name: str) -> str:
        return f"system:serviceaccount:{self.ns}:{name}"

    def token(self, account: str, audience: str = AUDIENCE) -> str:
        request = client.CoreV1Api(self.cluster.api).create_namespaced_service_account_token(
            account,
            self.ns,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=600)
            ),
        )
        return must(must(request.status).token)

    def reviews(self, result: str | None = None) -> float:
        return self.gw.metric(REVIEWS, **({"result": result} if result else {}))


def _sa_subject(ns: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "serviceAccount": f"system:serviceaccount:{ns}:{name}",
        "rules": [{"methods": ["*"]}],
    }


def _config(sim_port: int, ns: str, names: list[str]) -> dict[str, Any]:
    config = gateway_config(sim_port, [_sa_subject(ns, n) for n in names])
    config["tokenReview"] = {
        "audience": AUDIENCE,
        "cacheSeconds": CACHE_S,
        "negativeCacheSeconds": 2,
        "timeoutSeconds": 3,
    }
    config["audit"]["logReads"] = True
    config["mcp"] = {"enabled": True}
    return config


@pytest.fixture(scope="module")
def env(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    ns = f"e2e-sa-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(cluster.api)
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    role = f"{ns}-tokenreview"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    try:
        for name in ("gateway", "panel", "other", "doomed"):
            core.create_namespaced_service_account(
                ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
            )
        rbac.create_cluster_role(
            client.V1ClusterRole(
                metadata=client.V1ObjectMeta(name=role),
                rules=[
                    client.V1PolicyRule(
                        api_groups=["authentication.k8s.io"],
                        resources=["tokenreviews"],
                        verbs=["create"],
                    )
                ],
            )
        )
        rbac.create_cluster_role_binding(
            client.V1ClusterRoleBinding(
                metadata=client.V1ObjectMeta(name=role),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role
                ),
                subjects=[
                    client.RbacV1Subject(kind="ServiceAccount", name="gateway", namespace=ns)
                ],
            )
        )
        directory = tmp_path_factory.mktemp("sa-gateway")
        kubeconfig = token_kubeconfig(cluster, "gateway", ns, directory / "kubeconfig")
        with contextlib.ExitStack() as stack:
            sim = stack.enter_context(SimulatorProcess())
            gw = GatewayProcess(
                _config(sim.port, ns, ["panel", "doomed"]), env={"KUBECONFIG": str(kubeconfig)}
            )
            stack.enter_context(gw)
            yield Env(cluster, ns, gw, kubeconfig)
    finally:
        for call in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
            with contextlib.suppress(ApiException):
                call(role)
        with contextlib.suppress(ApiException):
            core.delete_namespace(ns)


async def _ws_status(url: str, headers: dict[str, str], **extra: str) -> dict[str, Any]:
    """StatusGet over a WebSocket (`extra`: fields added to the call, e.g. QRWC `apiKey`)."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, headers=headers) as ws,
    ):
        await ws.send_json({"jsonrpc": "2.0", "id": 7, "method": "StatusGet", **extra})
        async with asyncio.timeout(10):
            async for msg in ws:
                reply = json.loads(msg.data)
                if reply.get("id") == 7:
                    return dict(reply)
    raise AssertionError(f"no reply on {url}")


async def _mcp_tools(gw: GatewayProcess, token: str) -> list[str]:
    """An MCP session of the official SDK with the token as its bearer token."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with (
        http,
        streamable_http_client(f"{gw.url}/v1/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return [tool.name for tool in (await session.list_tools()).tools]


async def _ws_refused(gw: GatewayProcess, token: str) -> int:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(gw.ws_url, headers={"Authorization": f"Bearer {token}"})
    return info.value.status


def _no_token_in_output(gw: GatewayProcess, *tokens: str) -> None:
    out = gw.stdout() + gw.stderr()
    for token in tokens:
        assert token not in out
        assert token.split(".")[2] not in out  # not even its signature


async def test_the_right_account_and_audience_is_admitted_on_every_transport(env: Env) -> None:
    gw, token = env.gw, env.token("panel")
    before = env.reviews()
    status, body = gw.rpc(token, "StatusGet")
    assert status == 200, body
    assert body["result"]["State"] == "Active"
    assert env.reviews("authenticated") >= 1

    reply = await _ws_status(gw.ws_url, {"Authorization": f"Bearer {token}"})
    assert reply["result"]["State"] == "Active"
    # QRWC (`/qrc-public-api/v0`): the token as the `apiKey` of the first call
    reply = await _ws_status(f"{gw.url}/qrc-public-api/v0", {}, apiKey=token)
    assert reply["result"]["State"] == "Active"
    assert await _mcp_tools(gw, token)

    qrc = await QrcClient.connect(gw.host, gw.qrc_port)
    try:
        assert await qrc.call("Logon", {"User": "panel", "Password": token}) is True
        assert (await qrc.call("StatusGet"))["State"] == "Active"
        # a repeated Logon with the same credentials is answered true, as by a Core
        assert await qrc.call("Logon", {"User": "panel", "Password": token}) is True
    finally:
        await qrc.close()
    # one review for the five transports and the repeated logon (the cache answered)
    assert env.reviews() - before <= 1

    lines = [a for a in gw.audit_lines() if a.get("subject") == "panel"]
    assert {a.get("transport") for a in lines} >= {"http", "ws", "qrwc", "qrc"}
    assert all(a.get("token") == "serviceAccount" for a in lines), lines
    _no_token_in_output(gw, token)


async def test_repeated_calls_are_answered_from_the_cache(env: Env) -> None:
    gw, token = env.gw, env.token("panel")
    assert gw.rpc(token, "StatusGet")[0] == 200
    reviews = env.reviews()
    hits = gw.metric("qsys_gateway_tokenreview_cache_total", result="hit")
    for _ in range(10):
        assert gw.rpc(token, "StatusGet")[0] == 200
    assert env.reviews() == reviews
    assert gw.metric("qsys_gateway_tokenreview_cache_total", result="hit") >= hits + 10


async def test_another_account_or_audience_is_refused(env: Env) -> None:
    gw = env.gw
    other = env.token("other")
    rejected = env.reviews("rejected") + env.reviews("authenticated")
    status, body = gw.rpc(other, "StatusGet")
    assert status == 401
    assert body["error"]["code"] == ErrorCode.UNAUTHENTICATED
    # reviewed and authenticated by the API server, but no subject's account
    assert env.reviews("rejected") + env.reviews("authenticated") == rejected + 1
    assert await _ws_refused(gw, other) == 401
    qrc = await QrcClient.connect(gw.host, gw.qrc_port)
    try:
        with pytest.raises(QrcError) as info:
            await qrc.call("Logon", {"User": "other", "Password": other})
        assert info.value.code == ErrorCode.UNAUTHENTICATED
    finally:
        await qrc.close()
    refusals = [a for a in gw.audit_lines() if a.get("outcome") == "unauthenticated"]
    assert any(env.account("other") in str(a.get("reason")) for a in refusals), refusals

    wrong = env.token("panel", audience="https://some-other-service")
    assert gw.rpc(wrong, "StatusGet")[0] == 401
    assert gw.rpc(env.token("panel", audience=f"{AUDIENCE}.evil"), "StatusGet")[0] == 401
    _no_token_in_output(gw, other, wrong)


async def test_a_deleted_account_is_refused_once_the_cache_ttl_ends(env: Env) -> None:
    gw, token = env.gw, env.token("doomed")
    assert gw.rpc(token, "StatusGet")[0] == 200
    client.CoreV1Api(env.cluster.api).delete_namespaced_service_account("doomed", env.ns)
    deleted = time.monotonic()

    def refused() -> bool | None:
        return True if gw.rpc(token, "StatusGet")[0] == 401 else None

    wait_for("the deleted account's token refused", refused, timeout=CACHE_S + 20)
    assert time.monotonic() - deleted <= CACHE_S + 20


def _reload(gw: GatewayProcess, config: dict[str, Any]) -> None:
    reloads = gw.metric("qsys_gateway_config_reloads_total", result="success")
    gw.write_config(config)
    gw.wait_metric("qsys_gateway_config_reloads_total", reloads + 1, 15, result="success")


async def test_a_reload_that_removes_the_subject_closes_its_connections(env: Env) -> None:
    gw, token = env.gw, env.token("panel")
    kept = yaml.safe_load(gw.config_path.read_text())
    qrc = await QrcClient.connect(gw.host, gw.qrc_port)
    try:
        assert await qrc.call("Logon", {"User": "panel", "Password": token}) is True
        _reload(gw, {**kept, "subjects": [_sa_subject(env.ns, "other")]})
        await asyncio.wait_for(qrc.closed.wait(), 15)
        # the cached review of panel's token no longer admits anyone
        assert gw.rpc(token, "StatusGet")[0] == 401
        # and the other account, now a subject, is admitted without a restart
        assert gw.rpc(env.token("other"), "StatusGet")[0] == 200
    finally:
        await qrc.close()
        _reload(gw, kept)
    assert gw.rpc(token, "StatusGet")[0] == 200


def _forged(n: int) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"aud": [AUDIENCE], "exp": int(time.time()) + 600, "sub": "x", "n": n}
    return f"{part({'alg': 'RS256'})}.{part(claims)}.{part('forged')}"


@contextlib.contextmanager
def _fresh_gateway(env: Env, kubeconfig: Path) -> Iterator[GatewayProcess]:
    """Another gateway for `panel` (its own throttle and counters) with `kubeconfig`."""
    with SimulatorProcess() as sim:
        config = _config(sim.port, env.ns, ["panel"])
        with GatewayProcess(config, env={"KUBECONFIG": str(kubeconfig)}) as gw:
            yield gw


async def test_a_flood_of_garbage_tokens_costs_no_reviews(env: Env) -> None:
    with _fresh_gateway(env, env.kubeconfig) as gw:
        statuses = [gw.rpc(f"garbage-{i}-" + "x" * 40, "StatusGet")[0] for i in range(40)]
        assert statuses == [401] * 10 + [429] * 30
        assert gw.metric(REVIEWS) == 0  # not JWT-shaped: refused without a review
        assert gw.metric("qsys_gateway_tokenreview_skipped_total", reason="claims") == 10


async def test_a_flood_of_forged_tokens_costs_a_bounded_number_of_reviews(env: Env) -> None:
    """JWT-shaped, with this audience: reviewed (and rejected by the API server) until
    the failed-logon throttle stops it, per source whatever `User` each Logon names."""
    with _fresh_gateway(env, env.kubeconfig) as gw:
        codes = []
        qrc = await QrcClient.connect(gw.host, gw.qrc_port)
        try:
            for i in range(40):
                with pytest.raises(QrcError) as info:
                    await qrc.call("Logon", {"User": f"user{i}", "Password": _forged(i)})
                codes.append(info.value.code)
        finally:
            await qrc.close()
        assert codes == [ErrorCode.UNAUTHENTICATED] * 10 + [ErrorCode.RATE_LIMITED] * 30
        assert gw.metric(REVIEWS) == gw.metric(REVIEWS, result="rejected") == 10
        assert gw.metric("qsys_gateway_tokenreview_skipped_total", reason="throttled") == 30
        # a valid token from the same (throttled) source is not reviewed now either
        status, _ = gw.rpc(env.token("panel"), "StatusGet")
        assert status == 429


async def test_an_unreachable_api_server_fails_closed(env: Env, tmp_path: Path) -> None:
    broken = yaml.safe_load(env.kubeconfig.read_text())
    broken["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(broken))
    with _fresh_gateway(env, path) as gw:
        token = env.token("panel")
        status, body = gw.rpc(token, "StatusGet")
        assert status == 401, body
        assert "could not be reviewed" in body["error"]["message"]
        assert gw.metric(REVIEWS, result="error") >= 1
        qrc = await QrcClient.connect(gw.host, gw.qrc_port)
        try:
            with pytest.raises(QrcError) as info:
                await qrc.call("Logon", {"User": "panel", "Password": token}, timeout=15)
            assert info.value.code == ErrorCode.UNAUTHENTICATED
        finally:
            await qrc.close()
        logs = [line for line in gw.log_lines() if "TokenReview failed" in line.get("message", "")]
        assert logs
        assert "unreachable" in logs[0]["message"]
        _no_token_in_output(gw, token)


async def test_a_gateway_without_tokenreview_rbac_fails_closed(env: Env, tmp_path: Path) -> None:
    """Its own account may not create tokenreviews (403): every client is refused."""
    kubeconfig = token_kubeconfig(env.cluster, "other", env.ns, tmp_path / "kubeconfig")
    with _fresh_gateway(env, kubeconfig) as gw:
        token = env.token("panel")
        status, body = gw.rpc(token, "StatusGet")
        assert status == 401, body
        assert gw.metric(REVIEWS, result="error") == 1
        logs = [line for line in gw.log_lines() if "TokenReview failed" in line.get("message", "")]
        assert "403" in logs[0]["message"]
        _no_token_in_output(gw, token)
