"""operator/Dockerfile and gateway/Dockerfile, checked by parsing (no Docker engine here):
multi-stage, non-root numeric USER matching what the operator deploys, exec-form
ENTRYPOINT, no ADD of URLs, bytecode-free runtime, and the chart's gateway image
default equal to the operator's default."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from chart_support import CHART, REPO

from qsys_operator.render.config import CONFIG_PATH
from qsys_operator.render.deployment import RUN_AS
from qsys_operator.settings import DEFAULT_GATEWAY_IMAGE

DOCKERFILES = {"operator": "qsys-operator", "gateway": "qsys-gateway"}


@dataclass
class Instruction:
    name: str
    args: str
    stage: int


def parse(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; stage index per line."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text("utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        name, _, args = line.partition(" ")
        name = name.upper()
        if name == "FROM":
            stage += 1
        out.append(Instruction(name, args.strip(), stage))
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


@pytest.mark.parametrize("component", sorted(DOCKERFILES))
def test_dockerfile_properties(component: str) -> None:
    path = REPO / component / "Dockerfile"
    instructions = parse(path)
    froms = [i for i in instructions if i.name == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    assert " AS " in froms[0].args.upper(), "the builder stage is named"
    final = final_stage(instructions)

    users = [i for i in final if i.name == "USER"]
    assert users, "the final stage sets USER"
    assert re.fullmatch(r"\d+:\d+", users[-1].args), "numeric UID:GID (runAsNonRoot can verify it)"
    uid, gid = (int(x) for x in users[-1].args.split(":"))
    assert uid == gid == RUN_AS != 0
    # USER is the last instruction that could run anything as root in the final stage.
    after_user = final[final.index(users[-1]) :]
    assert not [i for i in after_user if i.name == "RUN"]

    (entrypoint,) = [i for i in final if i.name == "ENTRYPOINT"]
    argv = json.loads(entrypoint.args)  # exec form: a JSON array, no shell in between
    assert argv == [f"/opt/venv/bin/{DOCKERFILES[component]}"]

    env = " ".join(i.args for i in final if i.name == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert "/opt/venv/bin" in env, "PATH: the operator runs `qsys-gateway` by name"

    for i in instructions:
        assert i.name != "ADD", "COPY only (no ADD of URLs or archives)"
        assert "curl " not in i.args
        assert "wget " not in i.args
    copies = [i for i in final if i.name == "COPY"]
    assert copies
    assert all(i.args.startswith("--from=") for i in copies), "runtime stage copies only the venv"
    assert any(i.name == "RUN" and "compileall" in i.args for i in instructions), (
        "bytecode compiled at build time (read-only root filesystem at runtime)"
    )


def test_gateway_cmd_uses_the_config_path_the_operator_mounts() -> None:
    final = final_stage(parse(REPO / "gateway" / "Dockerfile"))
    (cmd,) = [i for i in final if i.name == "CMD"]
    assert json.loads(cmd.args) == ["--config", CONFIG_PATH]


def test_chart_gateway_image_default_is_the_operator_default() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text("utf-8"))
    values = yaml.safe_load((CHART / "values.yaml").read_text("utf-8"))
    gateway = values["gatewayImage"]
    image = f"{gateway['repository']}:{gateway['tag'] or chart['appVersion']}"
    assert image == DEFAULT_GATEWAY_IMAGE


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (REPO / ".dockerignore").read_text("utf-8").splitlines()
    assert lines[lines.index("*")] == "*", "deny by default"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "protocol/qsys_protocol",
        "gateway/qsys_gateway",
        "operator/qsys_operator",
        "simulator/qsys_core_sim",
    }
    for component in DOCKERFILES:
        for i in parse(REPO / component / "Dockerfile"):
            if i.name == "COPY" and not i.args.startswith("--from="):
                for src in i.args.split()[:-1]:
                    assert any(
                        src.rstrip("/") == a or a.startswith(src.rstrip("/") + "/") for a in allowed
                    ), f"{component}/Dockerfile copies {src}, which .dockerignore excludes"
