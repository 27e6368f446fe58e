"""The MCP Inspector's CLI mode (npm `@modelcontextprotocol/inspector`, pinned in
tests/mcp-inspector, installed by `make mcp-inspector`) against the real gateway."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest
from gateway_harness import PANEL_TOKEN, REPO, GatewayFactory
from mcp_support import enable_mcp, wait_healthy

from qsys_testkit import GatewayProcess

INSPECTOR = REPO / "tests" / "mcp-inspector" / "node_modules" / ".bin" / "mcp-inspector"


def inspector(gw: GatewayProcess, token: str | None, *args: str) -> tuple[int, Any, str]:
    if not INSPECTOR.exists():
        pytest.fail(f"{INSPECTOR} is missing: run `make mcp-inspector`")
    cmd = [str(INSPECTOR), "--cli", f"{gw.url}/v1/mcp", "--transport", "http"]
    if token is not None:
        cmd += ["--header", f"Authorization: Bearer {token}"]
    proc = subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=INSPECTOR.parents[2],
        stdin=subprocess.DEVNULL,
        check=False,
    )
    out = proc.stdout.strip()
    return proc.returncode, json.loads(out) if out else None, proc.stderr


async def test_inspector_cli_lists_calls_and_is_refused(
    module_sim_port: int, make_gateway: GatewayFactory
) -> None:
    gw = await asyncio.to_thread(make_gateway, module_sim_port, enable_mcp)
    await wait_healthy(gw)
    code, listed, err = await asyncio.to_thread(
        inspector, gw, PANEL_TOKEN, "--method", "tools/list"
    )
    assert code == 0, err
    tools = {t["name"]: t for t in listed["tools"]}
    assert "set_controls" in tools
    variants = tools["set_controls"]["inputSchema"]["oneOf"]
    gain = next(
        v["properties"]["values"]["properties"]["gain"]
        for v in variants
        if v["properties"]["component"].get("const") == "Room101 Zone1 Gain"
    )
    assert (gain["minimum"], gain["maximum"]) == (-60, 0)

    ok_args = ["component=Room101 Zone1 Gain", 'values={"gain": -25}']
    code, result, err = await asyncio.to_thread(
        inspector, gw, PANEL_TOKEN, "--method", "tools/call", "--tool-name", "set_controls",
        "--tool-arg", *ok_args,
    )  # fmt: skip
    assert code == 0, err
    assert result["structuredContent"]["set"] == {"gain": -25}

    high_args = ["component=Room101 Zone1 Gain", 'values={"gain": 5}']
    code, result, err = await asyncio.to_thread(
        inspector, gw, PANEL_TOKEN, "--method", "tools/call", "--tool-name", "set_controls",
        "--tool-arg", *high_args,
    )  # fmt: skip
    assert code != 0
    assert result["isError"] is True
    assert "outside your allowed range -60..0 dB" in result["content"][0]["text"]

    code, _, err = await asyncio.to_thread(inspector, gw, None, "--method", "tools/list")
    assert code != 0
    assert "auth" in err.lower()
