"""crds/ matches the models, and the generated schemas are structural."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from qsys_operator import crdgen
from qsys_operator.api import AccessPolicy, QSysCore, QSysCoreSpec

CRDS = crdgen.rendered()


def test_crd_files_match_models() -> None:
    for path, text in CRDS.items():
        assert path.exists(), f"{path.name} missing: run `make crds`"
        assert path.read_text("utf-8") == text, f"{path.name} is stale: run `make crds`"


def test_check_mode_passes_on_fresh_files() -> None:
    assert crdgen.main(["--check"]) == 0


def _nodes(schema: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(schema, dict):
        return
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _schema(model: type[QSysCore] | type[AccessPolicy]) -> dict[str, Any]:
    schema: dict[str, Any] = crdgen.crd(model)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("model", [QSysCore, AccessPolicy])
def test_schema_is_structural(model: type[QSysCore] | type[AccessPolicy]) -> None:
    text = yaml.safe_dump(_schema(model))
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs", "null"):
        assert forbidden not in text, forbidden
    for path, node in _nodes(_schema(model)):
        assert "type" in node, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node["type"] == "object" and "properties" not in node and path != ".metadata":
            assert "additionalProperties" in node or node.get(
                "x-kubernetes-preserve-unknown-fields"
            ), path


@pytest.mark.parametrize("model", [QSysCore, AccessPolicy])
def test_cel_rules_are_bounded(model: type[QSysCore] | type[AccessPolicy]) -> None:
    """Lists and strings CEL reads need maxItems/maxLength, or the cost estimate fails.

    The globs inside a gateway Rule are unbounded lists, but no CEL rule reads them.
    """
    for path, node in _nodes(_schema(model)):
        if node["type"] == "array" and not path.startswith(".spec.rules[]."):
            assert "maxItems" in node, path
        if "x-kubernetes-validations" in node and node["type"] == "string":
            assert "maxLength" in node, path


def test_defaults_present() -> None:
    spec = _schema(QSysCore)["properties"]["spec"]["properties"]
    assert spec["core"]["properties"]["port"]["default"] == 1710
    assert spec["gateway"]["default"] == {}
    replicas = spec["gateway"]["properties"]["replicas"]
    assert replicas.pop("description").endswith("Default: 2.")
    assert replicas == {
        "default": 2,
        "maximum": 50,
        "minimum": 1,
        "type": "integer",
    }
    limits = spec["limits"]["properties"]
    assert {k: limits[k]["default"] for k in limits} == {
        "burst": 500,
        "maxClients": 1000,
        "maxMessageBytes": 262144,
        "requestTimeoutSeconds": 5,
        "requestsPerSecond": 20,
        "storage": "memory",
        # bounds against abuse (issue 11, docs/security.md), passed to the gateway as is
        "maxHttpConnections": 4096,
        "maxPendingConnectionsPerSource": 64,
        "headerTimeoutSeconds": 10,
        "bodyTimeoutSeconds": 10,
        "maxBatchCalls": 100,
        "maxUnauthenticatedClients": 256,
        "maxUnauthenticatedClientsPerSource": 64,
        "logonTimeoutSeconds": 10,
        "maxChangeGroupsPerConnection": 64,
        "maxChangeGroupsPerSubject": 5000,
        "maxHubControlsPerSubject": 1024,
        "maxPendingCoreCallsPerSubject": 128,
    }
    sm = spec["monitoring"]["properties"]["serviceMonitor"]["properties"]
    assert sm["enabled"]["default"] is True
    assert sm["interval"]["default"] == "30s"
    assert spec["networkPolicy"]["properties"]["enabled"]["default"] is True
    assert spec["audit"]["properties"]["logReads"]["default"] is False


def test_printer_columns_and_names() -> None:
    core = crdgen.crd(QSysCore)
    version = core["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Host",
        "Ready",
        "Replicas",
        "Core State",
        "Age",
    ]
    assert version["subresources"] == {"status": {}}
    assert core["spec"]["names"]["shortNames"] == ["qcore"]
    policy = crdgen.crd(AccessPolicy)["spec"]
    assert [c["name"] for c in policy["versions"][0]["additionalPrinterColumns"]] == [
        "Core",
        "Bound",
        "Ready",
        "Age",
    ]
    assert policy["names"]["shortNames"] == ["qpol"]
    assert policy["names"]["categories"] == ["qsys"]


def test_cel_rules_declared_on_models() -> None:
    spec = _schema(QSysCore)["properties"]["spec"]
    assert "isIP(self.core.host)" in spec["x-kubernetes-validations"][0]["rule"]
    policy = _schema(AccessPolicy)
    rules = policy["properties"]["spec"]["properties"]["rules"]
    assert "valueRange.min <= r.valueRange.max" in rules["x-kubernetes-validations"][0]["rule"]
    subjects = policy["properties"]["spec"]["properties"]["subjects"]
    assert subjects["x-kubernetes-list-type"] == "map"
    assert subjects["x-kubernetes-list-map-keys"] == ["name"]
    assert "size(self.metadata.name)" in policy["x-kubernetes-validations"][0]["rule"]


def test_python_model_mirrors_core_address_rule() -> None:
    with pytest.raises(ValidationError, match="coreCIDRs"):
        QSysCoreSpec.model_validate({"core": {"host": "core.av.example"}})
    QSysCoreSpec.model_validate(
        {"core": {"host": "core.av.example"}, "networkPolicy": {"coreCIDRs": ["192.0.2.0/28"]}}
    )
    QSysCoreSpec.model_validate({"core": {"host": "192.0.2.1", "redundantHost": "192.0.2.2"}})


def _undocumented(schema: dict[str, Any]) -> list[str]:
    """Fields (object properties, at any depth) without a description."""
    missing = []
    for path, node in _nodes(schema):
        for name, sub in node.get("properties", {}).items():
            if path == "" and name == "metadata":
                continue  # the server allows only `type` there and documents ObjectMeta itself
            if not str(sub.get("description", "")).strip():
                missing.append(f"{path}.{name}")
    return missing


@pytest.mark.parametrize("model", [QSysCore, AccessPolicy])
def test_every_field_has_a_description(model: type[QSysCore] | type[AccessPolicy]) -> None:
    schema = _schema(model)
    assert schema["description"] == model.DESCRIPTION
    assert _undocumented(schema) == [], "add a docstring under each field (kubectl explain)"


def test_an_undocumented_field_is_found() -> None:
    from pydantic import BaseModel, ConfigDict

    class Documented(BaseModel):
        model_config = ConfigDict(use_attribute_docstrings=True)
        inner: int = 1
        """An inner field."""
        bare: str = ""

    class Outer(BaseModel):
        model_config = ConfigDict(use_attribute_docstrings=True)
        nested: Documented = Documented()
        """A nested object."""

    assert _undocumented(crdgen.openapi_schema(Outer)) == [".nested.bare"]


def test_descriptions_end_with_their_default() -> None:
    limits = _schema(QSysCore)["properties"]["spec"]["properties"]["limits"]["properties"]
    assert limits["maxClients"]["description"].endswith("Default: 1000.")
    assert limits["storage"]["description"].endswith("Default: `memory`.")


def test_field_reference_in_docs_is_generated() -> None:
    doc = crdgen.REFERENCE_DOC.read_text("utf-8")
    assert doc.count(crdgen.BEGIN) == 1
    rows = crdgen.field_rows(_schema(AccessPolicy)["properties"]["spec"], "spec", True)
    for row in rows:
        assert "| " + " | ".join(row) + " |" in doc
    assert any(r[0] == "`spec.subjects[].tokenSecretRef.key`" for r in rows)
