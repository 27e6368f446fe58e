"""The operator's layers (docs/architecture.md, "Operator"): no module imports a layer above."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "operator" / "qsys_operator"
LAYERS = {
    "api": 1,
    "kinds": 1,
    "settings": 1,
    "status": 1,
    "images": 1,
    "render": 2,
    "derive": 2,
    "secretrefs": 2,
    "ownership": 2,
    "queueing": 2,
    "crdgen": 2,
    "dashboards": 2,
    "k8s": 3,
    "probe": 3,
    "tokens": 3,
    "peering": 3,
    "metrics": 3,
    "logs": 3,
    "reconcile": 4,
    "handlers": 5,
    "health": 5,
    "cli": 5,
    "__init__": 5,
}
PURE = {
    "api",
    "kinds",
    "settings",
    "status",
    "images",
    "render",
    "derive",
    "secretrefs",
    "ownership",
    "queueing",
}
IO_LIBRARIES = {"kubernetes", "kopf", "aiohttp", "urllib", "socket", "requests"}


def _top(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(operator top-level modules, external top-level packages) imported by path."""
    tree = ast.parse(path.read_text("utf-8"))
    depth = len(path.relative_to(PKG).parts) - 1
    own: set[str] = set()
    external: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                mod = node.module or ""
                if mod.startswith("qsys_operator."):
                    own.add(mod.split(".")[1])
                else:
                    external.add(mod.split(".")[0])
            elif node.level > depth:  # leaves the subpackage
                if node.module:
                    own.add(node.module.split(".")[0])
                else:
                    own.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            external.update(a.name.split(".")[0] for a in node.names)
    return own, external


def test_every_module_has_a_layer() -> None:
    assert {_top(p) for p in PKG.rglob("*.py")} <= set(LAYERS)


def test_lower_layers_never_import_upper_ones() -> None:
    wrong = []
    for path in sorted(PKG.rglob("*.py")):
        top = _top(path)
        own, _ = _imports(path)
        wrong += [f"{path.relative_to(PKG)} imports {m}" for m in own if LAYERS[m] > LAYERS[top]]
    assert wrong == []


def test_pure_layers_do_no_io() -> None:
    wrong = []
    for path in sorted(PKG.rglob("*.py")):
        if _top(path) in PURE:
            _, external = _imports(path)
            wrong += [f"{path.relative_to(PKG)} imports {m}" for m in external & IO_LIBRARIES]
    assert wrong == []
