"""The operator's keyed work queue: coalescing, one run per key at a time, gate, backoff."""

from __future__ import annotations

import asyncio

from qsys_operator.queueing import FairSlots, WorkQueue


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


def test_a_burst_in_one_group_does_not_hold_back_another() -> None:
    """200 keys of namespace A queued first; B's key runs within the first few runs
    (round-robin between namespaces), not after A's whole burst."""
    order: list[tuple[str, int]] = []

    async def work(key: tuple[str, int]) -> None:
        order.append(key)
        await asyncio.sleep(0.001)

    async def main() -> None:
        queue: WorkQueue[tuple[str, int]] = WorkQueue(work, concurrency=4, group=lambda k: k[0])
        for i in range(200):
            queue.add(("a", i))
        await asyncio.sleep(0)  # A's workers are all waiting for a slot now
        queue.add(("b", 0))
        queue.add(("c", 0))
        while len(order) < 202:
            await asyncio.sleep(0.005)
        await queue.close()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert order.index(("b", 0)) <= 6
    assert order.index(("c", 0)) <= 7
    assert [k for k in order if k[0] == "a"] == [("a", i) for i in range(200)]  # FIFO in A


def test_without_groups_the_queue_is_first_come_first_served() -> None:
    order: list[tuple[str, int]] = []

    async def work(key: tuple[str, int]) -> None:
        order.append(key)
        await asyncio.sleep(0.001)

    async def main() -> None:
        queue: WorkQueue[tuple[str, int]] = WorkQueue(work, concurrency=4)
        for i in range(40):
            queue.add(("a", i))
        await asyncio.sleep(0)
        queue.add(("b", 0))
        while len(order) < 41:
            await asyncio.sleep(0.005)
        await queue.close()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert order.index(("b", 0)) == 40


def test_groups_take_turns_slot_by_slot() -> None:
    """Each freed slot goes to the next group in turn, FIFO within a group."""
    slots = FairSlots(1)
    admitted: list[str] = []

    async def one(group: str, tag: str) -> None:
        await slots.acquire(group)
        admitted.append(tag)
        await asyncio.sleep(0)
        slots.release()

    async def main() -> None:
        await slots.acquire("x")  # hold the only slot while the others queue up
        tasks = [asyncio.create_task(one(g, t)) for g, t in _ARRIVALS]
        await asyncio.sleep(0)
        slots.release()
        await asyncio.gather(*tasks)

    asyncio.run(asyncio.wait_for(main(), 5))
    assert admitted == ["a1", "b1", "c1", "a2", "b2", "a3"]


_ARRIVALS = [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("b", "b2"), ("c", "c1")]


def test_a_cancelled_waiter_gives_up_its_place_and_never_leaks_a_slot() -> None:
    slots = FairSlots(1)
    admitted: list[str] = []

    async def one(tag: str) -> None:
        await slots.acquire("a")
        admitted.append(tag)
        slots.release()

    async def main() -> None:
        await slots.acquire("a")
        gone = asyncio.create_task(one("gone"))
        kept = asyncio.create_task(one("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        slots.release()
        await kept
        # Handed a slot and cancelled before it ran: the slot is passed on, not lost.
        await slots.acquire("a")
        late = asyncio.create_task(one("late"))
        after = asyncio.create_task(one("after"))
        await asyncio.sleep(0)
        slots.release()  # hands the slot to `late` ...
        late.cancel()  # ... which is cancelled before it resumes
        await asyncio.wait_for(after, 1)
        await asyncio.wait_for(slots.acquire("z"), 1)  # and the slot is free again

    asyncio.run(asyncio.wait_for(main(), 5))
    assert admitted == ["kept", "after"]
