"""MCP tool calls through `/v1/mcp` beside the same read through `/v1/rpc`.

One gateway in front of the simulator; agents are official MCP SDK clients (Streamable
HTTP, one session each, one call in flight), the baseline is the same Component.Get over
`/v1/rpc` with as many keep-alive HTTP clients. The load generator shares the machine's
CPUs with the gateway and the simulator, and the SDK client is itself costly, so the
client side is part of what is measured (as it is for an agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from qsys_testkit import LOOPBACK, GatewayProcess

from .common import BenchContext, Recorder, Result, cpu_seconds, gateway, simulator
from .gateway import TOKEN, http_load

COMPONENT = "Room101 Zone1 Gain"
TOOL_ARGS = {"component": COMPONENT, "controls": ["gain"]}
RPC_PARAMS = {"Name": COMPONENT, "Controls": [{"Name": "gain"}]}
AGENTS = (1, 10)


@contextlib.asynccontextmanager
async def _agent(url: str) -> AsyncIterator[ClientSession]:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {TOKEN}"})
    async with (
        http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def mcp_load(gw: GatewayProcess, agents: int, ctx: BenchContext) -> Result:
    rec = Recorder(ctx.max_requests)
    url = f"http://{LOOPBACK}:{gw.http_port}/v1/mcp"
    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(_agent(url)) for _ in range(agents)]
        cpu = cpu_seconds(gw.pid)

        async def worker(session: ClientSession) -> None:
            while rec.running:
                sent = time.perf_counter()
                result = await session.call_tool("get_component", TOOL_ARGS)
                rec.record(time.perf_counter() - sent, bool(result.is_error))

        loop = asyncio.get_running_loop()
        workers = [loop.create_task(worker(s)) for s in sessions]
        elapsed = await rec.measure(ctx, workers)
        r = Result(
            "gateway/mcp",
            f"get_component, {agents} agent{'s' if agents > 1 else ''} x 1 in flight",
            rec.requests,
            rec.errors,
            elapsed,
            rec.latencies,
        )
        if rec.replies:
            r.cpu_per_request = (cpu_seconds(gw.pid) - cpu) / rec.replies
    return r


async def run(ctx: BenchContext) -> list[Result]:
    results: list[Result] = []
    with simulator() as sim:
        methods = ["Component.Get", "Component.Set"]
        gw = gateway(sim.port, token=TOKEN, methods=methods, max_clients=100, ready="healthz")
        gw.config["mcp"] = {
            "enabled": True,
            "maxStreamsPerSubject": 64,
            "maxSessionsPerSubject": 64,
        }
        gw.write_config(gw.config)
        with gw:
            for agents in AGENTS:
                rpc = await http_rpc_load(gw, agents, ctx)
                results.append(rpc)
                r = await mcp_load(gw, agents, ctx)
                r.baseline = rpc
                results.append(r)
                added = (r.percentile(50) - rpc.percentile(50)) * 1000
                ctx.notes.append(
                    f"MCP, {agents} agent(s): {r.rps:,.0f} tool calls/s; p50 {added:+.2f} ms "
                    "over the same Component.Get via /v1/rpc"
                )
    return results


async def http_rpc_load(gw: GatewayProcess, clients: int, ctx: BenchContext) -> Result:
    return await http_load(
        gw,
        clients,
        ctx,
        "gateway/http",
        f"Component.Get, {clients} client{'s' if clients > 1 else ''} x 1 in flight",
        method="Component.Get",
        params=RPC_PARAMS,
    )
