"""600 QRC and WebSocket clients polling change groups through one real gateway process
against a simulated Core that enforces the 512-group limit (docs/changegroups.md)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import resource
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from gateway_harness import ADMIN_TOKEN, GatewayFactory

from qsys_core_sim.server import CoreSimulator
from qsys_protocol.qrc.client import QrcClient
from qsys_protocol.qrc.errors import QrcError
from qsys_testkit import LOOPBACK, GatewayProcess, token_sha256

pytestmark = [pytest.mark.timeout(300), pytest.mark.timing]

ZONES = [
    "Room101 Zone1 Gain",
    "Room101 Zone2 Gain",
    "Room102 Zone1 Gain",
    "Room102 Zone2 Gain",
    "Auditorium Zone1 Gain",
    "Auditorium Zone2 Gain",
]
NAMED = "LobbyMusicLevel"
N_QRC = 300
N_WS = 300
STEPS = 5
RESTART_BEFORE = 3  # the Core restarts (and values change while it is down) before this step
POLL_EVERY = 0.5  # 450 polling clients: ~900 polls/s from this one test process
LIMITED_TOKEN = "lim-5c1f0e9d8c7b6a5f4e3d2c1b0a9f8e77"

Key = tuple[str, str]


def keys_of(i: int) -> list[Key]:
    return [(ZONES[i % 6], "gain"), (ZONES[(i + 1) % 6], "gain"), ("", NAMED)]


def value_at(key: Key, step: int) -> float:
    if not key[0]:
        return float(-1 - step)
    return float(-3 * step - ZONES.index(key[0]) - 1)


def apply_step(sim: CoreSimulator, step: int) -> None:
    for zone in ZONES:
        sim.set_control("gain", value_at((zone, "gain"), step), zone)
    sim.set_control(NAMED, value_at(("", NAMED), step))


def dedup(values: list[Any]) -> list[Any]:
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


@pytest.fixture
def nofile() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
async def sim() -> Any:
    core = CoreSimulator(idle_timeout=None, max_change_groups=512)
    await core.start()
    try:
        yield core
    finally:
        await core.stop()


def fanout_config(config: dict[str, Any]) -> None:
    config["limits"]["maxClients"] = 2000
    # QRC clients keep their sockets through the Core restart below (the default, `close`,
    # is covered by test_qrc_core_loss.py)
    config["listen"]["qrcOnCoreLoss"] = "keep"
    config["limits"]["rate"] = {"requestsPerSecond": 100000, "burst": 100000}
    config["subjects"].append(
        {
            "name": "limited",
            "tokenSha256": token_sha256(LIMITED_TOKEN),
            "rules": [
                {"methods": ["NoOp", "ChangeGroup.*"]},
                {
                    "methods": ["Component.Get"],
                    "components": ["Room101 Zone1 Gain"],
                    "controls": ["gain"],
                },
            ],
        }
    )


class Client:
    """One client: its group "1" (every client uses the same id) and what it has seen."""

    def __init__(self, index: int, kind: str, autopoll: bool) -> None:
        self.index = index
        self.kind = kind
        self.autopoll = autopoll
        self.keys = keys_of(index)
        self.seen: dict[Key, list[Any]] = {k: [] for k in self.keys}
        self.foreign: list[Any] = []
        self.errors: list[Any] = []
        self.qrc: QrcClient | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    def record(self, result: Any) -> None:
        if not isinstance(result, dict) or result.get("Id") != "1":
            self.errors.append(("bad poll", result))
            return
        for change in result["Changes"]:
            key = (change.get("Component", ""), change["Name"])
            if key in self.seen:
                self.seen[key].append(change["Value"])
            else:
                self.foreign.append(change)

    def latest(self, key: Key) -> Any:
        values = self.seen[key]
        return values[-1] if values else None

    async def call(self, method: str, params: Any) -> Any:
        if self.qrc is not None:
            return await self.qrc.call(method, params, timeout=15)
        assert self.ws is not None
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        await self.ws.send_str(
            json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        )
        try:
            # not asyncio.wait_for: on Python 3.11 it returns the result, and swallows a
            # cancellation, when the two meet, and a poller cancelled so would poll on
            async with asyncio.timeout(15):
                msg = await fut
        finally:
            self._waiting.pop(rid, None)
        if "error" in msg:
            raise QrcError(msg["error"]["code"], msg["error"].get("message"))
        return msg["result"]

    async def _read_ws(self) -> None:
        assert self.ws is not None
        async for raw in self.ws:
            if raw.type != aiohttp.WSMsgType.TEXT:
                self.errors.append(("ws message", raw.type))
                continue
            msg = json.loads(raw.data)
            if msg.get("method") == "ChangeGroup.Poll":
                self.record(msg["params"])
            elif "id" in msg and msg["id"] in self._waiting:
                waiting = self._waiting.pop(msg["id"])
                if not waiting.done():
                    waiting.set_result(msg)

    def _on_push(self, msg: Any) -> None:
        if msg.method == "ChangeGroup.Poll":
            self.record(msg.params)

    async def connect(self, gw: GatewayProcess, http: aiohttp.ClientSession, token: str) -> None:
        if self.kind == "qrc":
            self.qrc = await QrcClient.connect(
                LOOPBACK, gw.qrc_port, timeout=15, on_notification=self._on_push
            )
            await self.qrc.call("Logon", {"User": "admin", "Password": token}, timeout=15)
        else:
            self.ws = await http.ws_connect(
                gw.ws_url, headers={"Authorization": f"Bearer {token}"}, heartbeat=None
            )
            self._reader = asyncio.get_running_loop().create_task(self._read_ws())

    async def subscribe(self) -> None:
        by_zone = [k for k in self.keys if k[0]]
        for zone, name in by_zone:
            params = {"Id": "1", "Component": {"Name": zone, "Controls": [{"Name": name}]}}
            assert await self.call("ChangeGroup.AddComponentControl", params) is True
        assert await self.call("ChangeGroup.AddControl", {"Id": "1", "Controls": [NAMED]}) is True
        if self.autopoll:
            assert await self.call("ChangeGroup.AutoPoll", {"Id": "1", "Rate": POLL_EVERY})

    async def poll_forever(self, stop: asyncio.Event) -> None:
        """Polls until stop is set (or the task is cancelled)."""
        await asyncio.sleep(POLL_EVERY * (self.index % 10) / 10)
        while not stop.is_set():
            try:
                self.record(await self.call("ChangeGroup.Poll", {"Id": "1"}))
            except QrcError as exc:
                self.errors.append(("poll", exc.code, exc.message))
            except (TimeoutError, ConnectionError) as exc:
                # recorded, so a step that is never reached says why
                self.errors.append(("poll", type(exc).__name__))
                if isinstance(exc, ConnectionError):
                    return
            await asyncio.sleep(POLL_EVERY)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.qrc is not None:
            await self.qrc.close()
        if self.ws is not None:
            await self.ws.close()


async def wait_for(predicate: Any, timeout: float, what: str, why: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {why()}" if why else ""))
        await asyncio.sleep(0.05)


async def core_poll_rate(sim: CoreSimulator, seconds: float = 1.5) -> float:
    before = sim.engine.polls
    await asyncio.sleep(seconds)
    return (sim.engine.polls - before) / seconds


async def test_600_clients_share_a_few_core_groups(
    nofile: None, sim: CoreSimulator, make_gateway: GatewayFactory
) -> None:
    gw = await asyncio.to_thread(make_gateway, sim.port, fanout_config)
    apply_step(sim, 0)
    clients = [Client(i, "qrc" if i % 2 == 0 else "ws", i % 4 == 1) for i in range(N_QRC + N_WS)]
    # direct reference clients: one per subscription pattern, straight to the Core
    refs = [Client(i, "ref", False) for i in range(6)]
    pollers: list[asyncio.Task[None]] = []
    stop_polling = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    # inside the test's own timeout: a stuck await fails with its traceback, not a thread dump
    async with asyncio.timeout(240):
        async with aiohttp.ClientSession(connector=connector) as http:
            try:
                for ref in refs:
                    ref.qrc = await QrcClient.connect(LOOPBACK, sim.port, timeout=5)
                    await ref.subscribe()
                    ref.record(await ref.call("ChangeGroup.Poll", {"Id": "1"}))

                # Core poll rate with 10 clients, then with 600
                for c in clients[:10]:
                    await c.connect(gw, http, ADMIN_TOKEN)
                    await c.subscribe()
                rate_10 = await core_poll_rate(sim)
                for batch in range(10, len(clients), 50):
                    group = clients[batch : batch + 50]
                    await asyncio.gather(*(c.connect(gw, http, ADMIN_TOKEN) for c in group))
                    await asyncio.gather(*(c.subscribe() for c in group))
                rate_600 = await core_poll_rate(sim)
                assert sim.engine.change_group_count <= 4 + len(refs)
                core_groups = await asyncio.to_thread(gw.metric, "qsys_gateway_core_change_groups")
                assert 1 <= core_groups <= 4
                assert await asyncio.to_thread(gw.metric, "qsys_gateway_change_groups") == len(
                    clients
                )
                assert rate_600 <= 1.5 * rate_10 + 5, (rate_10, rate_600)
                assert rate_600 <= 4 / 0.05 + 5

                loop = asyncio.get_running_loop()
                pollers = [
                    loop.create_task(c.poll_forever(stop_polling))
                    for c in clients
                    if not c.autopoll
                ]

                def behind(step: int) -> list[Client]:
                    return [
                        c for c in clients if any(c.latest(k) != value_at(k, step) for k in c.keys)
                    ]

                def reached(step: int) -> bool:
                    return not behind(step)

                def why(step: int) -> str:
                    late = behind(step)
                    kinds = {(c.kind, c.autopoll) for c in late}
                    errors = [e for c in clients for e in c.errors[-1:]]
                    stopped = sum(1 for t in pollers if t.done())
                    return (
                        f"{len(late)} clients behind, (kind, autopoll) {sorted(kinds)}; "
                        f"{stopped} of {len(pollers)} pollers stopped; last errors {errors[:5]}"
                    )

                await wait_for(lambda: reached(0), 30, "initial values", lambda: why(0))
                for step in range(1, STEPS + 1):
                    if step == RESTART_BEFORE:
                        await sim.stop()
                        apply_step(sim, step)  # changed while the Core is down
                        await asyncio.sleep(0.3)
                        await sim.start()
                        for ref in refs:  # a direct client re-creates its group itself
                            await ref.close()
                            ref.qrc = await QrcClient.connect(LOOPBACK, sim.port, timeout=5)
                            await ref.subscribe()
                    else:
                        apply_step(sim, step)
                    for ref in refs:
                        ref.record(await ref.call("ChangeGroup.Poll", {"Id": "1"}))
                    await wait_for(
                        lambda s=step: reached(s), 30, f"step {step}", lambda s=step: why(s)
                    )
            finally:
                stop_polling.set()
                for task in pollers:
                    task.cancel()
                await asyncio.gather(*pollers, return_exceptions=True)
                # bounded, so a failure above is reported instead of the test's timeout
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(30):
                        await asyncio.gather(
                            *(c.close() for c in clients + refs), return_exceptions=True
                        )

    errors = [e for c in clients for e in c.errors]
    assert not errors, errors[:5]  # in particular: no error 5 for any client
    for c in clients:
        assert not c.foreign, c.foreign[:3]
        ref = refs[c.index % 6]
        for k in c.keys:
            expected = [value_at(k, s) for s in range(STEPS + 1)]
            assert dedup(ref.seen[k]) == expected
            # the same sequence as the direct run; at most repeats of a current value
            assert dedup(c.seen[k]) == dedup(ref.seen[k]), (c.index, c.kind, k, c.seen[k])
    assert await asyncio.to_thread(gw.metric, "qsys_gateway_core_polls_total") > 0


async def test_policy_applies_per_client(sim: CoreSimulator, make_gateway: GatewayFactory) -> None:
    gw = await asyncio.to_thread(make_gateway, sim.port, fanout_config)
    limited = await QrcClient.connect(LOOPBACK, gw.qrc_port, timeout=5)
    admin = await QrcClient.connect(LOOPBACK, gw.qrc_port, timeout=5)
    try:
        await limited.call("Logon", {"User": "limited", "Password": LIMITED_TOKEN})
        await admin.call("Logon", {"User": "admin", "Password": ADMIN_TOKEN})
        zone = "Room101 Zone1 Gain"
        await admin.call(
            "ChangeGroup.AddComponentControl",
            {
                "Id": "1",
                "Component": {"Name": zone, "Controls": [{"Name": "gain"}, {"Name": "mute"}]},
            },
        )
        await admin.call("ChangeGroup.AddControl", {"Id": "1", "Controls": [NAMED]})
        # the ChangeGroup.* rule alone is not enough: adding needs read permission
        for method, params in (
            ("ChangeGroup.AddControl", {"Id": "1", "Controls": [NAMED]}),
            (
                "ChangeGroup.AddComponentControl",
                {"Id": "1", "Component": {"Name": zone, "Controls": [{"Name": "mute"}]}},
            ),
        ):
            with pytest.raises(QrcError) as err:
                await limited.call(method, params)
            assert err.value.code == -32003
        with pytest.raises(QrcError) as err:
            await limited.call("ChangeGroup.Poll", {"Id": "1"})
        assert err.value.code == 6  # the refused add left no group
        await limited.call(
            "ChangeGroup.AddComponentControl",
            {"Id": "1", "Component": {"Name": zone, "Controls": [{"Name": "gain"}]}},
        )
        with pytest.raises(QrcError) as err:
            await limited.call(
                "ChangeGroup.AddComponentControl",
                {"Id": "1", "Component": {"Name": "No Such", "Controls": [{"Name": "gain"}]}},
            )
        assert err.value.code in (-32003, 7)
        first = await limited.call("ChangeGroup.Poll", {"Id": "1"})
        assert [(c["Component"], c["Name"]) for c in first["Changes"]] == [(zone, "gain")]
        sim.set_control("gain", -11, zone)
        sim.set_control("mute", 1, zone)
        sim.set_control(NAMED, -44)
        got: list[Any] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            got = (await limited.call("ChangeGroup.Poll", {"Id": "1"}))["Changes"]
        assert len(got) == 1
        assert (got[0]["Component"], got[0]["Name"], got[0]["Value"]) == (zone, "gain", -11)
        # admin's poll has all three; the limited client never sees mute or the named control
        seen = (await admin.call("ChangeGroup.Poll", {"Id": "1"}))["Changes"]
        assert {c["Name"] for c in seen} == {"gain", "mute", NAMED}
        # revoke the read rule: polls of the existing group stop carrying its values
        config = gw.config
        config["subjects"][-1]["rules"] = [{"methods": ["NoOp", "ChangeGroup.*"]}]
        gw.write_config(config)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            reloads = await asyncio.to_thread(
                gw.metric, "qsys_gateway_config_reloads_total", result="success"
            )
            if reloads >= 1:
                break
            await asyncio.sleep(0.2)
        sim.set_control("gain", -12, zone)
        await asyncio.sleep(0.5)
        assert (await limited.call("ChangeGroup.Poll", {"Id": "1"}))["Changes"] == []
        seen = (await admin.call("ChangeGroup.Poll", {"Id": "1"}))["Changes"]
        assert [c["Value"] for c in seen] == [-12]
    finally:
        await limited.close()
        await admin.close()
