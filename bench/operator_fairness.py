"""Fairness between namespaces: how long a QSysCore in namespace B waits for the operator
(time from its create until `status.observedGeneration` is written) while namespace A
creates 200 QSysCores at once; against the same core's time with the operator idle.

Same cluster and operator set-up as operator_scale (kwok nodes, gateway probe off, Cores
at 127.0.0.1; the operator watches both namespaces, which are deleted afterwards).
Target: B's core waits at most a few seconds longer than when idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from qsys_testkit.cluster import any_cluster

from .common import BenchContext, Result
from .operator_scale import (
    APPLY_THREADS,
    GROUP,
    VERSION,
    BenchOperator,
    api_client,
    core_body,
)

BURST = 200
TIMEOUT_S = 120.0
POLL_S = 0.05
TARGET_EXTRA_S = 5.0


def _observed(custom: client.CustomObjectsApi, ns: str, name: str) -> bool:
    obj = cast(
        dict[str, Any], custom.get_namespaced_custom_object(GROUP, VERSION, ns, "qsyscores", name)
    )
    return (obj.get("status") or {}).get("observedGeneration") == 1


def _time_to_observed(custom: client.CustomObjectsApi, ns: str, body: dict[str, Any]) -> float:
    start = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "qsyscores", body)
    while not _observed(custom, ns, body["metadata"]["name"]):
        if time.monotonic() - start > TIMEOUT_S:
            return float("inf")
        time.sleep(POLL_S)
    return time.monotonic() - start


def _named(i: int, name: str) -> dict[str, Any]:
    body = core_body(i)
    body["metadata"]["name"] = name
    return body


def _measure(ctx: BenchContext) -> list[Result]:
    with any_cluster() as kubeconfig:
        api = api_client(kubeconfig)
        v1, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        suffix = uuid.uuid4().hex[:6]
        busy, quiet = f"bench-fair-a-{suffix}", f"bench-fair-b-{suffix}"
        for ns in (busy, quiet):
            v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        work = Path(tempfile.mkdtemp(prefix="qsys-bench-fairness-"))
        operator: BenchOperator | None = None
        try:
            operator = BenchOperator(kubeconfig, busy, work / "operator.log", quiet).start()
            idle = _time_to_observed(custom, quiet, _named(0, "idle"))

            def create(i: int) -> None:
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, busy, "qsyscores", core_body(i)
                )

            start = time.monotonic()
            with ThreadPoolExecutor(APPLY_THREADS) as pool:
                list(pool.map(create, range(BURST)))
            created = time.monotonic() - start
            during = _time_to_observed(custom, quiet, _named(1, "during"))
            observed = 0
            while time.monotonic() - start < TIMEOUT_S:
                items = custom.list_namespaced_custom_object(GROUP, VERSION, busy, "qsyscores")
                observed = sum(
                    1
                    for o in cast(dict[str, Any], items)["items"]
                    if (o.get("status") or {}).get("observedGeneration") == 1
                )
                if observed == BURST:
                    break
                time.sleep(0.5)
            burst_done = time.monotonic() - start
            operator.check()
        finally:
            for ns in (busy, quiet):
                with contextlib.suppress(ApiException):
                    v1.delete_namespace(ns)
            if operator is not None:
                operator.stop()
            api.close()  # type: ignore[no-untyped-call]

    extra = during - idle
    ctx.notes.append(
        f"operator fairness: a core in namespace B observed {during:.2f} s after its create "
        f"while namespace A created {BURST} cores (creates took {created:.1f} s), "
        f"{idle:.2f} s with the operator idle; all of A observed after {burst_done:.1f} s "
        f"({observed}/{BURST}); target ≤ {TARGET_EXTRA_S:.0f} s more than idle: "
        f"{'PASS' if extra <= TARGET_EXTRA_S else 'FAIL'}"
    )
    scenario = f"core in namespace B during {BURST} creates in namespace A (time to observed)"
    return [Result("operator", scenario, 1, 0 if extra <= TARGET_EXTRA_S else 1, during, [during])]


async def run(ctx: BenchContext) -> list[Result]:
    return await asyncio.to_thread(_measure, ctx)
