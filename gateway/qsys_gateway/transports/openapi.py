"""The HTTP API's shapes as pydantic models, and the OpenAPI 3.1 document built from them.

`/v1/status` and the probes answer by dumping these models; `/v1/rpc` calls are described
with the params models `qsys_protocol.qrc.methods` validates every call with, and its
answers with the JSON-RPC envelopes below (what `jsonrpc.result_message` /
`error_message` write). Served at `GET /v1/openapi.json`.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from qsys_protocol.qrc.methods import METHODS, StatusResult

from .. import __version__

REF = "#/components/schemas/{model}"
RequestIdType = int | str


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RpcErrorObject(_Out):
    code: int = Field(description="JSON-RPC / QRC / gateway error code (docs/gateway.md)")
    message: str
    data: Any | None = None


class RpcErrorResponse(_Out):
    jsonrpc: Literal["2.0"] = "2.0"
    id: RequestIdType | None
    error: RpcErrorObject


class RpcResultResponse(_Out):
    jsonrpc: Literal["2.0"] = "2.0"
    id: RequestIdType
    result: Any


class RpcCall(BaseModel):
    """Envelope of a call; `params` depends on `method` (see the per-method schemas)."""

    model_config = ConfigDict(extra="forbid")
    jsonrpc: Literal["2.0"]
    method: str = Field(min_length=1, max_length=128)
    params: Any | None = None
    id: RequestIdType | None = Field(
        default=None, description="Absent for a notification (answered with 204)"
    )


class UpstreamStatus(_Out):
    up: bool
    activeHost: str | None
    circuit: Literal["closed", "half_open", "open"]


class GatewayStatus(_Out):
    version: str
    configGeneration: int
    clients: int
    shuttingDown: bool


class StatusResponse(_Out):
    core: StatusResult | None = Field(description="Last EngineStatus of the Core, if any")
    upstream: UpstreamStatus
    gateway: GatewayStatus


class ProbeResponse(_Out):
    status: Literal["ok", "ready", "connecting to the Core", "shutting down"]


class HealthComponents(_Out):
    upstream: Literal["up", "down"]
    config: Literal["ok"]
    rateLimitStorage: Literal["ok", "down"]


class HealthResponse(_Out):
    status: Literal["healthy", "degraded", "unhealthy"]
    components: HealthComponents


def _schema(target: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema of a model/type with its definitions moved into `schemas`."""
    adapter = target if isinstance(target, TypeAdapter) else TypeAdapter(target)
    schema: dict[str, Any] = adapter.json_schema(ref_template=REF, mode="serialization")
    schemas.update(schema.pop("$defs", {}))
    return schema


def _ref(
    model: type[BaseModel], schemas: dict[str, Any], mode: JsonSchemaMode = "serialization"
) -> dict[str, str]:
    schema = model.model_json_schema(ref_template=REF, mode=mode)
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@cache
def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    call_ref = _ref(RpcCall, schemas, mode="validation")
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for name, spec in sorted(METHODS.items()):
        key = "Call_" + name.replace(".", "_")
        params: dict[str, Any] = (
            {"type": "null"} if spec.params is None else _ref(spec.params, schemas, "validation")
        )
        schemas[key] = {
            "title": f"{name} call",
            "allOf": [
                call_ref,
                {"properties": {"method": {"const": name}, "params": params}},
            ],
        }
        calls.append({"$ref": REF.format(model=key)})
        result_key = "Result_" + name.replace(".", "_")
        schemas[result_key] = {
            "title": f"{name} result",
            "allOf": [
                {"$ref": REF.format(model="RpcResultResponse")},
                {"properties": {"result": _schema(spec.result, schemas)}},
            ],
        }
        results.append({"$ref": REF.format(model=result_key)})
    error_ref = _ref(RpcErrorResponse, schemas)
    _ref(RpcResultResponse, schemas)
    # A bare answer does not name its method, and many results are `true`: anyOf.
    one_answer = {"anyOf": [*results, error_ref]}
    error = _json(error_ref, "JSON-RPC error (the code maps to the HTTP status)")
    headers = {
        "X-Request-ID": {
            "description": "The client's X-Request-ID if sane, else a generated one",
            "schema": {"type": "string"},
        }
    }
    retry = {
        **headers,
        "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}},
    }
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    probe = _ref(ProbeResponse, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "qsys-gateway HTTP API",
            "version": __version__,
            "description": "QRC JSON-RPC over HTTP in front of a Q-SYS Core, with "
            "per-subject policy. Error codes: -32001 unauthenticated (401), -32003 "
            "forbidden (403), -32029 rate limited (429), -32050 Core unavailable (503), "
            "-32008 Core timeout (504).",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "paths": {
            "/v1/rpc": {
                "post": {
                    "operationId": "rpc",
                    "summary": "One QRC call, or a batch of up to 100",
                    "security": bearer,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"oneOf": calls},
                                        {
                                            "type": "array",
                                            "items": {"oneOf": calls},
                                            "minItems": 1,
                                            "maxItems": 100,
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            **_json(
                                {"oneOf": [one_answer, {"type": "array", "items": one_answer}]},
                                "The answer (a Core error too), or the answers of a batch",
                            ),
                            "headers": headers,
                        },
                        "204": {"description": "Only notifications were sent", "headers": headers},
                        **{
                            str(status): {**error, "headers": headers}
                            for status in (400, 401, 403, 404, 413)
                        },
                        **{str(status): {**error, "headers": retry} for status in (429, 503)},
                        "504": {**error, "headers": headers},
                    },
                }
            },
            "/v1/status": {
                "get": {
                    "operationId": "status",
                    "summary": "The gateway's view of its Core (any authenticated subject)",
                    "security": bearer,
                    "responses": {
                        "200": _json(_ref(StatusResponse, schemas), "Status"),
                        "401": error,
                        "429": error,
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document")},
                }
            },
            "/livez": {
                "get": {
                    "operationId": "livez",
                    "summary": "Liveness: the process answers",
                    "responses": {"200": _json(probe, "Alive")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: false while shutting down",
                    "responses": {
                        "200": _json(probe, "Ready"),
                        "503": _json(probe, "Shutting down"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Components: Core connection, config, rate-limit storage",
                    "responses": {
                        "200": _json(_ref(HealthResponse, schemas), "Healthy or degraded"),
                        "503": _json(_ref(HealthResponse, schemas), "Unhealthy"),
                    },
                }
            },
        },
    }
