"""The operator's keyed work queue: coalescing, one run per key at a time, gate, backoff."""

from __future__ import annotations

import asyncio

from qsys_operator.queueing import WorkQueue


def test_burst_coalesces_and_runs_never_overlap() -> None:
    runs: list[str] = []
    running: set[str] = set()
    overlap: list[str] = []

    async def work(key: str) -> None:
        if key in running:
            overlap.append(key)
        running.add(key)
        runs.append(key)
        await asyncio.sleep(0.01)
        running.discard(key)

    async def main() -> None:
        queue: WorkQueue[str] = WorkQueue(work, concurrency=4)
        for _ in range(20):
            queue.add("a")
        queue.add("b")
        await asyncio.sleep(0.005)
        for _ in range(20):
            queue.add("a")  # arrives during a's first run: exactly one more run
        await asyncio.sleep(0.1)
        await queue.close()

    asyncio.run(main())
    assert runs.count("a") == 2
    assert runs.count("b") == 1
    assert overlap == []


def test_concurrency_bound() -> None:
    in_flight = 0
    peak = 0

    async def work(key: int) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1

    async def main() -> None:
        queue: WorkQueue[int] = WorkQueue(work, concurrency=3)
        for i in range(12):
            queue.add(i)
        await asyncio.sleep(0.2)
        await queue.close()

    asyncio.run(main())
    assert peak == 3


def test_closed_gate_skips_the_run() -> None:
    runs: list[str] = []

    async def work(key: str) -> None:
        runs.append(key)

    async def closed() -> bool:
        return False

    async def main() -> None:
        queue: WorkQueue[str] = WorkQueue(work, concurrency=1, gate=closed)
        queue.add("a")
        await asyncio.sleep(0.02)
        await queue.close()

    asyncio.run(main())
    assert runs == []


def test_failure_retries_with_doubling_backoff_then_resets() -> None:
    attempts: list[str] = []
    errors: list[tuple[str, str, float]] = []

    async def work(key: str) -> None:
        attempts.append(key)
        if len(attempts) < 3:
            raise RuntimeError(f"boom {len(attempts)}")

    async def main() -> WorkQueue[str]:
        queue: WorkQueue[str] = WorkQueue(
            work,
            concurrency=1,
            on_error=lambda k, e, d: errors.append((k, str(e), d)),
            max_backoff=0.04,
        )
        queue.add("a")
        await asyncio.sleep(0.3)
        await queue.close()
        return queue

    queue = asyncio.run(main())
    assert attempts == ["a", "a", "a"]
    assert errors == [("a", "boom 1", 0.04), ("a", "boom 2", 0.04)]
    assert queue.backoff("a") == 0.0


def test_backoff_doubles_up_to_the_cap() -> None:
    delays: list[float] = []

    async def work(key: str) -> None:
        raise ValueError("always")

    async def main() -> None:
        queue: WorkQueue[str] = WorkQueue(
            work,
            concurrency=1,
            on_error=lambda k, e, d: delays.append(d),
            first_backoff=0.01,
            max_backoff=0.04,
        )
        queue.add("a")
        while len(delays) < 5:
            await asyncio.sleep(0.01)
        await queue.close()

    asyncio.run(asyncio.wait_for(main(), 5))
    assert delays[:5] == [0.01, 0.02, 0.04, 0.04, 0.04]
