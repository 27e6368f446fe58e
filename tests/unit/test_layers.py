"""Lower layers never import upper ones (docs/gateway.md, docs/architecture.md).

Read from the source with `ast`, so a violation fails here before it becomes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "qsys_protocol": REPO / "protocol" / "qsys_protocol",
    "qsys_gateway": REPO / "gateway" / "qsys_gateway",
    "qsys_operator": REPO / "operator" / "qsys_operator",
    "qsys_core_sim": REPO / "simulator" / "qsys_core_sim",
    "qsys_testkit": REPO / "testkit" / "qsys_testkit",
    "qsys_kubectl": REPO / "plugin" / "qsys_kubectl",
}
# What each program may import of the others (qsys_protocol is the shared bottom). The test
# kit sits above the programs: it starts them and may import them; none of them imports it.
ALLOWED_PACKAGES = {
    "qsys_protocol": set(),
    "qsys_core_sim": {"qsys_protocol"},
    "qsys_gateway": {"qsys_protocol"},
    "qsys_operator": {"qsys_protocol", "qsys_gateway.logs"},
    # The kubectl plugin: the operator's models and names, the gateway's own policy code.
    "qsys_kubectl": {
        "qsys_protocol",
        "qsys_operator.api",
        "qsys_operator.render",
        "qsys_gateway.policy",
    },
    "qsys_testkit": {"qsys_protocol", "qsys_core_sim", "qsys_gateway", "qsys_operator"},
}
# The gateway's layers, bottom first; a module may import its own layer and those below.
GATEWAY_LAYERS = [
    {"logs", "metrics", "tracing"},
    {"upstream"},
    {"auth", "tokenreview", "policy", "ratelimit", "audit", "reload", "client_registry"}
    | {"inflight", "sendbudget", "connlimit"},
    {"runtime"},
    {"subject_sessions"},
    {"records"},
    {"identity"},
    {"admission"},
    {"transports", "mcp"},
    {"app"},
    {"cli"},
]


def _modules(package: str) -> dict[str, Path]:
    root = PACKAGES[package]
    found = {}
    for path in root.rglob("*.py"):
        parts = (package, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)
    return {name for name in out if name.startswith("qsys_")}


def _allowed(name: str, allowed: set[str]) -> bool:
    return any(name == a or name.startswith(a + ".") for a in allowed)


def test_programs_import_only_the_shared_bottom() -> None:
    wrong = []
    for package, allowed in ALLOWED_PACKAGES.items():
        for module, path in _modules(package).items():
            for name in _imports(module, path):
                if name.split(".")[0] != package and not _allowed(name, allowed):
                    wrong.append(f"{module} imports {name}")
    assert wrong == []


def test_no_program_imports_the_test_kit() -> None:
    assert all("qsys_testkit" not in allowed for allowed in ALLOWED_PACKAGES.values())
    imports = _imports("qsys_testkit", PACKAGES["qsys_testkit"] / "__init__.py")
    assert "qsys_core_sim.server" in imports  # the check reads the kit too


def _layer(module: str) -> int:
    first = module.split(".")[1] if "." in module else ""
    for index, layer in enumerate(GATEWAY_LAYERS):
        if first in layer:
            return index
    raise AssertionError(f"{module}: add it to GATEWAY_LAYERS in {Path(__file__).name}")


def test_gateway_layers_import_only_downwards() -> None:
    wrong = []
    for module, path in _modules("qsys_gateway").items():
        if module == "qsys_gateway":
            continue
        mine = _layer(module)
        for name in _imports(module, path):
            if not name.startswith("qsys_gateway.") or name == "qsys_gateway.__version__":
                continue
            if _layer(name) > mine:
                wrong.append(f"{module} (layer {mine}) imports {name} (layer {_layer(name)})")
    assert wrong == []


def test_the_layer_check_sees_a_violation() -> None:
    assert _layer("qsys_gateway.upstream.pool") < _layer("qsys_gateway.admission")
    imports = _imports("qsys_gateway.policy", PACKAGES["qsys_gateway"] / "policy.py")
    assert "qsys_protocol.qrc.methods" in imports


def _front_door_bypasses(path: Path) -> list[str]:
    """Calls only admission may make: the steps `Admission.serve` takes in order, the
    in-flight gates, and the upstream pool's entries (`forward`, `open_session`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name, owner = node.func.attr, node.func.value
        owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
        upstream = owner_name == "upstream" and name in ("forward", "open_session")
        steps = owner_name == "admission" and name in ("check_batch", "rate_limit", "handle")
        gate = name == "acquire" and "gate" in owner_name
        if upstream or steps or gate:
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {owner_name}.{name}")
    return found


def test_transports_reach_the_core_only_through_serve() -> None:
    """Every transport, MCP included, takes the front door: no transport calls a step of
    admission's order itself, takes a gate, or calls the Core through the pool."""
    root = PACKAGES["qsys_gateway"]
    found = [
        hit
        for package in ("transports", "mcp")
        for path in sorted((root / package).rglob("*.py"))
        for hit in _front_door_bypasses(path)
    ]
    assert found == []
    # the check sees them where they are taken
    assert _front_door_bypasses(root / "admission.py") != []
