"""Fixtures shared by every test suite: a simulated Core, QRC clients, raw sockets, subprocesses.

Everything listens on 127.0.0.1 and everything a fixture starts is stopped in
its teardown, whether the test passed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from qsys_core_sim.server import CoreSimulator
from qsys_protocol.qrc.client import QrcClient
from qsys_testkit import LOOPBACK, free_port, timeline
from qsys_testkit.checkout import (
    awaiting_tools,
    background_build,
    wait_for_side_run,
    wait_for_tools,
)
from qsys_testkit.nodeshare import Mode, NodeShare

if TYPE_CHECKING:
    from qsys_testkit.pytest_plugin import SimulatorFactory

pytest_plugins = ["qsys_testkit.pytest_plugin"]

REPO = Path(__file__).resolve().parents[1]
E2E = REPO / "tests" / "e2e"
# The e2e tests run in xdist groups (`--dist loadgroup`), each on one worker against one
# cluster: the tests on kwok's fake nodes only against a control plane of their own,
# beside the tests on the real node against the main one (tests/e2e/conftest.py), in
# three lanes; or all in one group when they share one cluster
# (qsys_testkit.cluster.kwok_plane_enabled).
E2E_GROUP = "e2e"
E2E_KWOK_GROUP = "e2e-kwok"
E2E_NODE_GROUP = "e2e-node"
# The real-node files run in three lanes (xdist groups `e2e-node-a`, `-b` and `-c`, a
# worker each) that share the node: a file marked `node_lane("b")` or `("c")` in that
# lane, the others in the first. A file holds the node shared, or exclusive when marked
# `node_exclusive` (qsys_testkit.nodeshare; docs/testing.md, "The real node in lanes").
NODE_LANES = ("a", "b", "c")
# A file marked `node_last` waits for the other lanes' last real-node files to end (at
# most this long): test_release_registry.py's pulls leave the node's containerd
# answering ErrImageNeverPull for imported images (test_helm_upgrade.py says more).
NODE_LAST_WAIT_S = 3600.0
# How long another lane's first test looks for the first lane to have started (its
# worker took it) before it takes the node without waiting for the first lane's hold.
LANE_START_WAIT_S = 60.0
# Tests marked `timing` run one at a time, last, and after the background tool builds.
TIMING_GROUP = "timing"
# The other tests go to the workers a file at a time (xdist group FILE_GROUP + path), so
# that a module fixture starts once: spread test by test, test_plugin_dist.py's three
# tests once built its wheels and venv with pip on three workers at the same time.
FILE_GROUP = "file:"
# What every e2e test waits for under `make test`: the control plane's binaries.
E2E_TOOL_GROUP = "kube"
# Why a test must fail before its fixtures start (a tool build failed, ...).
SETUP_FAILURE = pytest.StashKey[str]()


def _is_e2e(item: pytest.Item) -> bool:
    return item.path.is_relative_to(E2E) or item.get_closest_marker("e2e") is not None


def _uses_real_node(item: pytest.Item) -> bool:
    return "real_node" in getattr(item, "fixturenames", ())


def _is_timing(item: pytest.Item) -> bool:
    return item.get_closest_marker("timing") is not None


def _node_lane(item: pytest.Item) -> str:
    """Item's lane. Only the first may hold the node exclusive: an exclusive test waits
    for the other lanes' files to end while its own file's objects stay, so were two
    lanes to do so, one's exclusive test could run beside the other's half-done file."""
    mark = item.get_closest_marker("node_lane")
    lane = str(mark.args[0]) if mark else NODE_LANES[0]
    if lane not in NODE_LANES:
        raise pytest.UsageError(f"{item.nodeid}: node_lane({lane!r}), not one of {NODE_LANES}")
    if lane != NODE_LANES[0] and item.get_closest_marker("node_exclusive"):
        raise pytest.UsageError(
            f"{item.nodeid}: node_exclusive in lane {lane!r}; only lane {NODE_LANES[0]!r} "
            "may hold the real node alone"
        )
    return lane


def _e2e_group(item: pytest.Item, split: bool) -> str:
    if not split:
        return E2E_GROUP
    if _uses_real_node(item):
        return f"{E2E_NODE_GROUP}-{_node_lane(item)}"
    return E2E_KWOK_GROUP


def _build_order(items: list[pytest.Item]) -> dict[Path, int]:
    """Per test file: the position, in the background build's order, of the last tool
    group its tests wait for (-1 for none), so that tests run in the order their tools
    are built and a file's tests stay together (its module fixtures start once)."""
    order = os.environ.get("QSYS_TOOL_GROUPS", "").split()
    position = {group: index for index, group in enumerate(order)}
    last: dict[Path, int] = {}
    for item in items:
        needed = [position.get(group, -1) for group in needed_tools(item)]
        last[item.path] = max([last.get(item.path, -1), *needed])
    return last


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The e2e tests in their xdist groups first (a worker each), then the others, the
    `timing` tests in a group of their own last; within each, in the order their tool
    groups are built (hack/test.sh passes `--no-loadscope-reorder`, so that xdist hands
    out the groups in this order). The `kind` tests (their own Docker engine and kind
    cluster, `make kind-smoke`) run only when `-m` names them: deselected, never
    skipped."""
    if "kind" not in (config.option.markexpr or ""):
        dropped = [item for item in items if item.get_closest_marker("kind")]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if not item.get_closest_marker("kind")]
    split = False
    if any(_is_e2e(item) for item in items):
        # Imported here: the Kubernetes client it imports would slow every other session.
        from qsys_testkit.cluster import kwok_plane_enabled

        split = kwok_plane_enabled()
    for item in items:
        if _is_e2e(item):
            item.add_marker(pytest.mark.xdist_group(_e2e_group(item, split)))
        elif _is_timing(item):
            item.add_marker(pytest.mark.xdist_group(TIMING_GROUP))
        else:
            item.add_marker(pytest.mark.xdist_group(FILE_GROUP + item.nodeid.split("::", 1)[0]))
    build = _build_order(items)
    items.sort(
        key=lambda item: (
            0 if _is_e2e(item) else 2 if _is_timing(item) else 1,
            build[item.path],
        )
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    """In an xdist worker: the groups must have reached the scheduler (it reads them from
    the node ids), or two workers would each start a cluster; such tests fail at setup."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    for item in session.items:
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
            item.stash[SETUP_FAILURE] = (
                f"pytest-xdist does not group tests (`--dist loadgroup`) under pytest "
                f"{pytest.__version__}: the test lost its xdist_group; use the pytest "
                "version pyproject.toml allows (`make install`)"
            )


def needed_tools(item: pytest.Item) -> set[str]:
    """Tool groups item waits for: its `tools` marks; for an e2e test also `kube` (the
    control plane; in the floor run also QSYS_KUBE_GROUP, the floor's), and the real
    node's groups (QSYS_NODE_TOOL_GROUPS) when it uses the real node; for a `timing` test
    every group (no compiler beside it)."""
    groups = {group for mark in item.iter_markers("tools") for group in mark.args}
    build = background_build()
    if build is None:
        return groups
    if _is_timing(item):
        return groups | build[1]
    if _is_e2e(item):
        groups.add(E2E_TOOL_GROUP)
        groups.add(os.environ.get("QSYS_KUBE_GROUP", E2E_TOOL_GROUP))
        if _uses_real_node(item):
            groups |= set(os.environ.get("QSYS_NODE_TOOL_GROUPS", "").split())
    return groups & build[1]


_node_share: NodeShare | None = None


def _node_mode(item: pytest.Item | None) -> Mode | None:
    """How item holds the real node: None when it does not use it (or runs elsewhere)."""
    if item is None or not _uses_real_node(item) or os.environ.get("KUBECONFIG"):
        return None
    return Mode.EXCLUSIVE if item.get_closest_marker("node_exclusive") else Mode.SHARED


def _share() -> NodeShare:
    global _node_share
    if _node_share is None:
        from qsys_testkit.cluster import LocalCluster

        _node_share = NodeShare(LocalCluster().share_dir)
    return _node_share


def _lane_of(item: pytest.Item | None) -> str | None:
    """The real-node lane item runs in under `make test` (its xdist group), else None."""
    mark = item.get_closest_marker("xdist_group") if item is not None else None
    group = str(mark.args[0]) if mark else ""
    prefix = f"{E2E_NODE_GROUP}-"
    return group.removeprefix(prefix) if group.startswith(prefix) else None


def _run_id() -> str:
    """One id for every worker of this pytest run."""
    return os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())


def _other_lanes(item: pytest.Item, own: str) -> set[str]:
    return {lane for other in item.session.items if (lane := _lane_of(other)) not in (None, own)}


def _wait_other_lanes(item: pytest.Item, lane: str) -> str | None:
    """Before item takes the node: the order of the lanes. The first lane's first hold
    comes first (it starts with its exclusive files, which the other lanes would
    otherwise delay by a whole file); a `node_last` file lets the node go and waits
    until the other lanes that have started (on other workers; one queued behind it on
    this worker runs after it anyway) ran their last real-node file. Why not, when they
    did not within NODE_LAST_WAIT_S. Without xdist the lanes run in one process, in
    the order of the tests."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    share, run = _share(), _run_id()
    others = _other_lanes(item, lane)
    first = {NODE_LANES[0]} & others
    if first and not share.wait(run, first, "started", LANE_START_WAIT_S):
        share.wait(run, first, "held", NODE_LAST_WAIT_S)
    if item.get_closest_marker("node_last") is None:
        return None
    running = share.wait(run, share.marked(run, others, "started"), "finished", 0)
    if not running:
        return None
    share.release()
    running = share.wait(run, running, "finished", NODE_LAST_WAIT_S)
    if running:
        return f"the real-node lanes {sorted(running)} did not end within {NODE_LAST_WAIT_S:.0f}s"
    return None


def _keeps_node(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    """Whether the hold on the node goes on after item: within a file, and from one
    exclusive file to the next whose tools are built (another lane must not slip in
    between two exclusive files and make them wait for its own)."""
    if nextitem is None:
        return False
    if nextitem.path == item.path:
        return True
    if _node_mode(item) is not Mode.EXCLUSIVE or _node_mode(nextitem) is not Mode.EXCLUSIVE:
        return False
    return wait_for_tools(needed_tools(nextitem), timeout=0) is None


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, None, None]:
    """Under `make test` the tool groups build while tests run: wait for the ones item
    needs here, outside its timeout (pytest-timeout starts it inside this hook), and for
    its hold on the real node (another lane may have it); let the node go after its
    teardown unless the next test keeps it; its line in the run's timeline
    (qsys_testkit.timeline)."""
    mark = item.get_closest_marker("xdist_group")
    group = str(mark.args[0]) if mark else FILE_GROUP
    if group.startswith(FILE_GROUP):
        group = item.path.parent.name
    entered = time.time()
    mode, lane = _node_mode(item), _lane_of(item)
    if mode is not None and lane is not None:
        _share().mark(_run_id(), lane, "started")
    needed = needed_tools(item)
    error = wait_for_tools(needed)
    if _is_timing(item):
        wait_for_side_run()
    if mode is not None and lane is not None:
        error = error or _wait_other_lanes(item, lane)
    if error:
        item.stash[SETUP_FAILURE] = error
    if mode is not None:
        _share().acquire(mode)
        if lane is not None:
            _share().mark(_run_id(), lane, "held")
    started = time.time()
    with awaiting_tools(needed):
        yield
    if mode is not None and not _keeps_node(item, nextitem):
        _share().release()
    if mode is not None and lane is not None and _lane_of(nextitem) != lane:
        _share().mark(_run_id(), lane, "finished")
    timeline.record(group, item.nodeid, entered, started, time.time())


def pytest_runtest_setup(item: pytest.Item) -> None:
    if SETUP_FAILURE in item.stash:
        pytest.fail(item.stash[SETUP_FAILURE], pytrace=False)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """In the xdist controller (or a run without workers), after every fixture's teardown:
    a local control plane whose starting process died (an xdist worker crash) is stopped."""
    if hasattr(session.config, "workerinput"):
        return
    # Imported here: the Kubernetes client it imports would slow the start of every session.
    from qsys_testkit.cluster import PLANES, LocalCluster

    for plane in PLANES:
        # Its owner_file (LocalCluster.join) is left behind only when its last user died
        # (the workers that share it stop it as they leave).
        local = LocalCluster(timeout=300, plane=plane)
        try:
            owner = int(local.owner_file.read_text())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and Path(f"/proc/{owner}").exists():
            continue  # another session's, still running
        local.down(check=False)


class RawClient:
    """A plain asyncio socket speaking NUL-framed bytes, for tests of malformed input."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, host: str = LOOPBACK) -> RawClient:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=4 * 2**20), 5.0
        )
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_json(self, message: Any) -> None:
        await self.send(orjson.dumps(message) + b"\x00")

    async def recv(self, timeout: float = 5.0) -> Any:
        """The next frame, decoded."""
        frame = await asyncio.wait_for(self.reader.readuntil(b"\x00"), timeout)
        return orjson.loads(frame[:-1])

    async def recv_reply(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame that is not a pushed notification."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.recv(timeout)
                if "method" not in msg:
                    assert isinstance(msg, dict)
                    return msg

    async def call(self, method: str, params: Any = None, rid: int = 1) -> dict[str, Any]:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        await self.send_json(msg)
        return await self.recv_reply()

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """Read until EOF (discarding frames); True when the peer closed within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


ClientFactory = Callable[..., Awaitable[QrcClient]]
RawFactory = Callable[..., Awaitable[RawClient]]


@pytest.fixture
async def sim(qsys_simulator: SimulatorFactory) -> CoreSimulator:
    """A started simulator with the built-in design on an ephemeral loopback port."""
    return await qsys_simulator(idle_timeout=30.0)


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """Open QrcClients to loopback ports; all are closed afterwards."""
    clients: list[QrcClient] = []

    async def factory(port: int, **kwargs: Any) -> QrcClient:
        client = await QrcClient.connect(LOOPBACK, port, **kwargs)
        clients.append(client)
        return client

    try:
        yield factory
    finally:
        for client in clients:
            await client.close()


@pytest.fixture
async def qrc_client(sim: CoreSimulator, make_client: ClientFactory) -> QrcClient:
    """A QrcClient connected to `sim` (its EngineStatus is left in `notifications`)."""
    return await make_client(sim.port)


@pytest.fixture
async def make_raw() -> AsyncIterator[RawFactory]:
    """Open plain NUL-framing sockets to loopback ports; all are closed afterwards."""
    clients: list[RawClient] = []

    async def factory(port: int) -> RawClient:
        client = await RawClient.connect(port)
        clients.append(client)
        return client

    try:
        yield factory
    finally:
        for client in clients:
            await client.close()


@pytest.fixture
async def raw_client(sim: CoreSimulator, make_raw: RawFactory) -> RawClient:
    """A raw socket to `sim` that has already consumed the EngineStatus push."""
    client = await make_raw(sim.port)
    hello = await client.recv()
    assert hello["method"] == "EngineStatus"
    return client


@pytest.fixture
def unused_port() -> int:
    return free_port()
