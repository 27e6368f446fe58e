"""Generate the CRDs in crds/ from the pydantic models, and the chart's CRD templates from
crds/: `python -m qsys_operator.crdgen [--check]`.

Pydantic emits JSON Schema 2020-12; the API server wants a *structural*
OpenAPI v3 schema. The conversion below inlines every `$ref`, turns optional
(`X | None`) into plain optional (a null sent by a client is pruned by the
server), drops titles and `additionalProperties: false`, rewrites numeric
exclusive bounds to the OpenAPI 3.0 form, and replaces defaults of nested
objects by `{}` so the server fills in the inner defaults itself.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from .api import GROUP, VERSION, AccessPolicy, QSysCore

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
CATEGORIES = ["qsys"]

Schema = dict[str, Any]

_DROP = {"title", "$defs"}


def _resolve(node: Any, defs: dict[str, Schema]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return {k: _resolve(v, defs) for k, v in node.items()}


def _without_null(node: Schema) -> Schema:
    variants = node.get("anyOf")
    if variants is None:
        return node
    rest = [v for v in variants if v.get("type") != "null"]
    if len(rest) != 1:
        raise ValueError(f"cannot express a union in a structural schema: {variants}")
    merged = {**{k: v for k, v in node.items() if k != "anyOf"}, **rest[0]}
    if merged.get("default", 0) is None:
        del merged["default"]
    return merged


def _structural(node: Any) -> Any:
    if isinstance(node, list):
        return [_structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = _without_null(node)
    out: Schema = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "additionalProperties" and isinstance(value, bool):
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
            continue
        if key in ("properties",):
            out[key] = {name: _structural(sub) for name, sub in value.items()}
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        out[key] = _structural(value) if isinstance(value, (dict, list)) else value
    if isinstance(out.get("default"), dict) and "properties" in out:
        out["default"] = {}
    if "description" in out:
        text = " ".join(str(out["description"]).split())
        out["description"] = _with_default(text, out.get("default"))
    if out.get("type") == "object" and not (
        "properties" in out
        or "additionalProperties" in out
        or out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _with_default(description: str, default: Any) -> str:
    """A field's description, ending with its default so `kubectl explain` shows it."""
    if default in (None, {}, [], "") or "default" in description.lower():
        return description
    shown = json.dumps(default) if not isinstance(default, str) else f"`{default}`"
    return f"{description.rstrip()} Default: {shown}."


def openapi_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(mode="validation")
    resolved = _resolve(raw, raw.get("$defs", {}))
    schema: Schema = _sorted(_structural(resolved))
    return schema


def _sorted(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _sorted(node[k]) for k in sorted(node)}
    if isinstance(node, list):
        return [_sorted(n) for n in node]
    return node


def _without_defaults(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_without_defaults(n) for n in node]
    return node


API_VERSION_DESCRIPTION = "The versioned schema of this object: qsys.dev/v1alpha1."
KIND_DESCRIPTION = "The REST resource this object represents."


def _resource_schema(model: type[QSysCore] | type[AccessPolicy]) -> Schema:
    schema = openapi_schema(model)
    props = schema["properties"]
    # The operator writes status whole; server-side defaults there would only add noise.
    props["status"] = _without_defaults(props["status"])
    props["apiVersion"] = {"type": "string", "description": API_VERSION_DESCRIPTION}
    props["kind"] = {"type": "string", "description": KIND_DESCRIPTION}
    # The server refuses anything but `type` here; it documents ObjectMeta itself.
    props["metadata"] = {"type": "object"}
    schema["required"] = ["spec"]
    schema["description"] = model.DESCRIPTION
    result: Schema = _sorted(schema)
    return result


def _condition_column(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="{name}")].status',
    }


AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

COLUMNS: dict[str, list[dict[str, Any]]] = {
    QSysCore.KIND: [
        {"name": "Host", "type": "string", "jsonPath": ".spec.core.host"},
        _condition_column("Ready"),
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.gateway.replicas"},
        {"name": "Core State", "type": "string", "jsonPath": ".status.core.state"},
        AGE,
    ],
    AccessPolicy.KIND: [
        {"name": "Core", "type": "string", "jsonPath": ".spec.coreRef.name"},
        _condition_column("Bound"),
        _condition_column("Ready"),
        AGE,
    ],
}

SHORT_NAMES = {QSysCore.KIND: ["qcore"], AccessPolicy.KIND: ["qpol"]}


SELECTABLE = {AccessPolicy.KIND: [{"jsonPath": f".{AccessPolicy.CORE_REF_FIELD}"}]}
"""Fields a list may select on (CRD selectableFields, Kubernetes 1.31+): a reconcile lists
only its core's policies (`fieldSelector=spec.coreRef.name=NAME`), not the namespace's."""


def crd(model: type[QSysCore] | type[AccessPolicy]) -> dict[str, Any]:
    kind, plural = model.KIND, model.PLURAL
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "qsys-operator"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": SHORT_NAMES[kind],
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": COLUMNS[kind],
                    **({"selectableFields": SELECTABLE[kind]} if kind in SELECTABLE else {}),
                    "schema": {"openAPIV3Schema": _resource_schema(model)},
                }
            ],
        },
    }


# ---- docs/resources.md: the field reference, from the same schema ----------------------

REFERENCE_DOC = REPO / "docs" / "resources.md"
BEGIN = "<!-- BEGIN GENERATED FIELD REFERENCE (make crds) -->"
END = "<!-- END GENERATED FIELD REFERENCE -->"


def _type(node: Schema) -> str:
    kind = node.get("type", "any")
    if kind == "array":
        return f"[]{_type(node.get('items') or {})}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type(node['additionalProperties'])}"
    if kind == "object" and "properties" not in node:
        return "object (Kubernetes type)"
    return str(kind)


def _limits(node: Schema) -> str:
    parts = []
    if "enum" in node:
        parts.append(" \\| ".join(f"`{v}`" for v in node["enum"]))
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None:
        parts.append(f"{'>' if node.get('exclusiveMinimum') else '≥'} {low}")
    if high is not None:
        parts.append(f"≤ {high}")
    for key, label in (("minLength", "min length"), ("maxLength", "max length")):
        if key in node:
            parts.append(f"{label} {node[key]}")
    for key, label in (("minItems", "min items"), ("maxItems", "max items")):
        if key in node:
            parts.append(f"{label} {node[key]}")
    if "pattern" in node:
        parts.append(f"pattern `{node['pattern']}`".replace("|", "\\|"))
    return ", ".join(parts)


def field_rows(node: Schema, path: str, required: bool = False) -> list[tuple[str, ...]]:
    """(field, type, default, limits, description) of `node` and every field below it."""
    rows: list[tuple[str, ...]] = []
    default = node.get("default")
    shown = "required" if required else ("-" if default in (None, {}, []) else json.dumps(default))
    description = str(node.get("description", ""))
    rows.append((f"`{path}`", _type(node), shown, _limits(node), description))
    child = node
    suffix = ""
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        child, suffix = node["items"], "[]"
    needed = set(child.get("required") or [])
    for name, sub in (child.get("properties") or {}).items():
        rows += field_rows(sub, f"{path}{suffix}.{name}", name in needed)
    return rows


def reference_markdown() -> str:
    out = [
        BEGIN,
        "",
        "Generated by `make crds` from the models' field descriptions (what `kubectl explain`",
        "shows); `tests/unit/test_crds.py` fails when this section drifts.",
    ]
    for model in (QSysCore, AccessPolicy):
        schema = _resource_schema(model)
        out += ["", f"### {model.KIND} fields", "", model.DESCRIPTION, ""]
        out += ["| field | type | default | limits | description |", "|---|---|---|---|---|"]
        for part in ("spec", "status"):
            for row in field_rows(schema["properties"][part], part, part == "spec"):
                out.append("| " + " | ".join(row) + " |")
    out += ["", END]
    return "\n".join(out)


def _reference_doc() -> str:
    current = REFERENCE_DOC.read_text("utf-8")
    start, stop = current.find(BEGIN), current.find(END)
    if start < 0 or stop < 0:
        raise ValueError(f"{REFERENCE_DOC}: markers {BEGIN!r} / {END!r} not found")
    return current[:start] + reference_markdown() + current[stop + len(END) :]


# ---- the chart's CRD templates, from the same files -------------------------------------

CHART_CRD_DIR = REPO / "charts" / "qsys-operator" / "templates" / "crds"


def chart_template(source: str, text: str) -> str:
    """The chart template of one CRD file of crds/: the same object, installed and
    upgraded with the release while `crds.enabled`, kept on uninstall while `crds.keep`
    (the way cert-manager ships its CRDs), labelled like the chart's other objects."""
    doc = yaml.safe_load(text)
    if doc.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{source}: not a CustomResourceDefinition")
    body = yaml.safe_dump({"spec": doc["spec"]}, sort_keys=False, width=100)
    if "{{" in body or "}}" in body:
        raise ValueError(f"{source}: template delimiters in the CRD would need escaping")
    labels = yaml.safe_dump(doc["metadata"].get("labels") or {}, sort_keys=True).splitlines()
    lines = [
        f"{{{{- /* Generated by `make crds` from crds/{source}; do not edit. */}}}}",
        "{{- if .Values.crds.enabled }}",
        f"apiVersion: {doc['apiVersion']}",
        "kind: CustomResourceDefinition",
        "metadata:",
        f"  name: {doc['metadata']['name']}",
        "  labels:",
        *(f"    {line}" for line in labels),
        '    {{- include "qsys-operator.crdLabels" . | nindent 4 }}',
        "  {{- if .Values.crds.keep }}",
        "  annotations:",
        "    helm.sh/resource-policy: keep",
        "  {{- end }}",
        body.rstrip("\n"),
        "{{- end }}",
    ]
    return "\n".join(lines) + "\n"


def rendered() -> dict[Path, str]:
    """File path -> text of every generated file: the CRDs, the chart's CRD templates
    (also of the hand-written CRDs in crds/) and the field reference."""
    header = "# Generated by `make crds` (python -m qsys_operator.crdgen) — do not edit.\n"
    out: dict[Path, str] = {}
    for model in (QSysCore, AccessPolicy):
        doc = crd(model)
        path = CRD_DIR / f"{GROUP}_{model.PLURAL}.yaml"
        out[path] = header + yaml.safe_dump(doc, sort_keys=False, width=100)
    sources = {p: p.read_text("utf-8") for p in sorted(CRD_DIR.glob("*.yaml")) if p not in out}
    for path, text in sorted({**sources, **out}.items()):
        out[CHART_CRD_DIR / path.name] = chart_template(path.name, text)
    out[REFERENCE_DOC] = _reference_doc()
    return out


def stale_chart_templates() -> list[Path]:
    """Files in the chart's CRD template directory that no CRD of crds/ generates."""
    wanted = {p.name for p in CRD_DIR.glob("*.yaml")}
    return sorted(p for p in CHART_CRD_DIR.glob("*.yaml") if p.name not in wanted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qsys_operator.crdgen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when crds/ is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in rendered().items():
        current = path.read_text("utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path.relative_to(REPO))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, "utf-8")
            print(f"wrote {path.relative_to(REPO)}")
    for path in stale_chart_templates():
        if args.check:
            stale.append(path.relative_to(REPO))
        else:
            path.unlink()
            print(f"removed {path.relative_to(REPO)}")
    if stale:
        print(f"out of date (run `make crds`): {', '.join(map(str, stale))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
