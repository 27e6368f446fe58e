"""Token rotation without a dark room, on the real control plane with the real operator:
`kubectl qsys token rotate`, a panel on a raw QRC connection logged on with the old
token keeps working through the grace period and is closed when it ends, a client with
the new token works at once, status and audit say which token was used."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest
from operator_support import (
    Operator,
    StandInGateway,
    core_body,
    create,
    get,
    policy_body,
    running_operator,
    wait_condition,
)
from plugin_support import Plugin, gateway_pod_ip, rendered_config

from qsys_protocol.qrc.client import QrcClient
from qsys_testkit import SimulatorProcess
from qsys_testkit.checkout import REPO
from qsys_testkit.cluster import Cluster, must, wait_for
from qsys_testkit.kube import apply_crds, secret_text

# A stand-in gateway on the host at a kwok pod's loopback address: local cluster only.
pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]

GRACE_S = 12


@pytest.fixture
def operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Any:
    apply_crds(cluster.api, REPO / "crds")
    with running_operator(cluster, namespace, tmp_path / "operator.log") as op:
        yield op


def _until(cluster: Cluster, ns: str) -> str | None:
    grace = (get(cluster, ns, "AccessPolicy", "panel").get("status") or {}).get("tokensInGrace")
    return (grace or {}).get("gen")


async def test_old_token_works_through_the_grace_period_only(
    cluster: Cluster, operator: Operator, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    qsys = Plugin(cluster, ns)
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(SimulatorProcess())
        create(cluster, ns, core_body("room", sim.port, audit={"logReads": True}))
        create(
            cluster,
            ns,
            policy_body("panel", "room", [{"name": "gen"}], tokenGracePeriodSeconds=GRACE_S),
        )
        wait_condition(cluster, ns, "AccessPolicy", "panel", "Ready", "True")
        old = must(
            wait_for("token", lambda: secret_text(cluster.api, ns, "panel-gen-token", "token"))
        )
        key = must(secret_text(cluster.api, ns, "room-gateway-token-key", "key"))
        pod_ip = wait_for("pod IP", lambda: gateway_pod_ip(cluster, ns, "room"))
        config = rendered_config(cluster, ns, "room")
        gw = StandInGateway(tmp_path, config, pod_ip, key)
        stack.callback(gw.stop)
        gw.start()

        panel = await QrcClient.connect(pod_ip, gw.config["listen"]["qrc"])
        try:
            assert await panel.call("Logon", {"User": "gen", "Password": old}) is True
            assert (await panel.call("StatusGet"))["State"] == "Active"

            rotated = qsys.json("token", "rotate", "panel", "gen", "--show")
            new = rotated["token"]
            rotated_at = time.time()
            new_config = wait_for(
                "rotation rendered",
                lambda: (c := rendered_config(cluster, ns, "room")) != config and c,
            )
            assert isinstance(new_config, str)
            assert old not in new_config
            assert new not in new_config
            gw.write(new_config)
            # A client with the new token works at once; the old token is still admitted.
            wait_for("new token admitted", lambda: gw.rpc(new, "StatusGet")[0] == 200, timeout=15)
            assert gw.rpc(old, "StatusGet")[0] == 200
            assert (await panel.call("StatusGet"))["State"] == "Active"

            until = wait_for("status lists the grace", lambda: _until(cluster, ns))
            end = dt.datetime.fromisoformat(until).timestamp()
            assert rotated_at < end <= rotated_at + GRACE_S + 5
            shown = qsys.json("status")["items"][0]["policies"][0]
            assert shown["name"] == "panel"

            # The panel keeps working until the grace ends, not longer.
            while time.time() < end - 2:
                assert (await panel.call("StatusGet"))["State"] == "Active"
                await asyncio.sleep(1)
            assert not panel.closed.is_set()
            await asyncio.wait_for(panel.closed.wait(), timeout=end - time.time() + 5)
            assert time.time() >= end - 0.5
        finally:
            await panel.close()
        assert gw.rpc(old, "StatusGet")[0] == 401
        assert gw.rpc(new, "StatusGet")[0] == 200
        wait_for("grace leaves the status", lambda: _until(cluster, ns) is None, timeout=60)

    used = {(line["subject"], line.get("token")) for line in gw.audit_lines()}
    assert ("gen", "previous") in used
    assert ("gen", "current") in used
    text = gw.stdout() + gw.stderr()
    assert old not in text
    assert new not in text
