"""`GET /v1/openapi.json` of a real gateway: a valid OpenAPI 3.1 document (openapi-spec-validator)
whose schemas accept what the gateway really answers and the calls clients really send,
and reject what the gateway refuses."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import aiohttp
import pytest
from gateway_harness import NORULES_TOKEN, PANEL_TOKEN

from qsys_testkit import GatewayProcess

# Anything a schema (in)validation raises is a jsonschema ValidationError (untyped here).
SchemaError = Exception
# The validators are imported where used: jsonschema's import takes 1.2 s (rfc3987-syntax
# builds its grammar), which every xdist worker would pay at collection.


@pytest.fixture(scope="module")
def spec(shared_gateway: GatewayProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{shared_gateway.url}/v1/openapi.json", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/json")
        doc: dict[str, Any] = json.loads(r.read())
    return doc


def check(doc: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """Validate against a schema of the document (its #/components refs resolve in `doc`)."""
    from openapi_schema_validator import OAS31Validator, validate

    validate(instance, {**schema, "components": doc["components"]}, cls=OAS31Validator)


def response_schema(doc: dict[str, Any], path: str, verb: str, status: int) -> dict[str, Any]:
    schema: dict[str, Any] = doc["paths"][path][verb]["responses"][str(status)]["content"][
        "application/json"
    ]["schema"]
    return schema


async def get(gw: GatewayProcess, path: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(gw.url + path, headers=headers) as r:
        return r.status, await r.json()


async def post(gw: GatewayProcess, body: Any, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gw.url}/v1/rpc", json=body, headers=headers) as r,
    ):
        return r.status, await r.json()


async def test_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    from openapi_spec_validator import validate as validate_spec

    validate_spec(spec)  # raises on any violation of the OpenAPI 3.1 schema
    assert spec["openapi"] == "3.1.0"
    assert {"/v1/rpc", "/v1/status", "/livez", "/readyz", "/healthz"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    # The call params are the models every call is validated with.
    assert schemas["LogonParams"]["properties"]["Password"]["writeOnly"] is True
    assert "Call_Control_Set" in schemas
    assert "Call_ChangeGroup_Poll" in schemas


async def test_validator_rejects_a_broken_document(spec: dict[str, Any]) -> None:
    from openapi_spec_validator import validate as validate_spec

    broken = {**spec, "paths": {"/v1/rpc": {"post": {"responses": "none"}}}}
    with pytest.raises(SchemaError):
        validate_spec(broken)


async def test_real_answers_match_the_document(
    spec: dict[str, Any], shared_gateway: GatewayProcess
) -> None:
    gw = shared_gateway
    for path, status in (("/livez", 200), ("/readyz", 200), ("/healthz", 200)):
        got_status, body = await get(gw, path)
        assert got_status == status
        check(spec, response_schema(spec, path, "get", status), body)

    got_status, body = await get(gw, "/v1/status", PANEL_TOKEN)
    assert got_status == 200
    assert body["core"] is not None
    check(spec, response_schema(spec, "/v1/status", "get", 200), body)

    got_status, body = await get(gw, "/v1/status")
    assert got_status == 401
    check(spec, response_schema(spec, "/v1/status", "get", 401), body)

    ok_schema = response_schema(spec, "/v1/rpc", "post", 200)
    for call in (
        {"jsonrpc": "2.0", "id": 1, "method": "NoOp", "params": {}},
        {"jsonrpc": "2.0", "id": "s", "method": "StatusGet"},
        {"jsonrpc": "2.0", "id": 2, "method": "Control.Get", "params": ["LobbyGain"]},
    ):
        check(
            spec,
            spec["paths"]["/v1/rpc"]["post"]["requestBody"]["content"]["application/json"][
                "schema"
            ],
            call,
        )
        got_status, body = await post(gw, call, PANEL_TOKEN)
        assert got_status == 200, body
        check(spec, ok_schema, body)
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "NoOp", "params": {}},
        {"jsonrpc": "2.0", "id": 2, "method": "StatusGet"},
    ]
    got_status, body = await post(gw, batch, PANEL_TOKEN)
    assert got_status == 200
    check(spec, ok_schema, body)

    for token, status in ((None, 401), (NORULES_TOKEN, 403)):
        got_status, body = await post(gw, {"jsonrpc": "2.0", "id": 3, "method": "NoOp"}, token)
        assert got_status == status
        check(spec, response_schema(spec, "/v1/rpc", "post", status), body)


async def test_request_schema_rejects_what_the_gateway_refuses(spec: dict[str, Any]) -> None:
    request = spec["paths"]["/v1/rpc"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    bad_calls: list[Any] = [
        {"jsonrpc": "2.0", "id": 1, "method": "Control.Set", "params": {"Name": "x"}},
        {"jsonrpc": "1.0", "id": 1, "method": "NoOp"},
        {"jsonrpc": "2.0", "id": 1, "method": "NoOp", "extra": True},
        [],
    ]
    for bad in bad_calls:
        with pytest.raises(SchemaError):
            check(spec, request, bad)
