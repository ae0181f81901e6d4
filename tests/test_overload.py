"""AdaptiveLimiter: deadline-aware admission, priority shedding, AIMD."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from gateway.overload import AdaptiveLimiter, Shed, Slot
from gateway.tenants import Priority
from tunggal.settings import GatewaySettings

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def fixed(limit: int, **kw: Any) -> GatewaySettings:
    return GatewaySettings(
        overload_initial_limit=limit,
        overload_min_limit=limit,
        overload_max_limit=limit,
        **kw,
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_passed_deadline_is_shed_even_when_idle() -> None:
    async def scenario() -> None:
        limiter = AdaptiveLimiter(fixed(4))
        shed = await limiter.acquire(Priority.CRITICAL, 0.0, "Verify")
        assert isinstance(shed, Shed) and shed.reason == "deadline"
        assert shed.retry_after_ms >= 1
        assert limiter.in_flight == 0
        slot = await limiter.acquire(Priority.CRITICAL, None, "Verify")
        assert isinstance(slot, Slot)
        slot.release()
        slot.release()  # idempotent
        assert limiter.in_flight == 0

    run(scenario())


def test_call_that_cannot_start_in_time_is_never_queued() -> None:
    async def scenario() -> None:
        limiter = AdaptiveLimiter(fixed(1, overload_initial_service_s=1.0))
        busy = await limiter.acquire(Priority.NORMAL, None, "Identify")
        assert isinstance(busy, Slot)
        loop = asyncio.get_running_loop()
        start = loop.time()
        shed = await limiter.acquire(Priority.CRITICAL, 0.3, "Identify")
        assert loop.time() - start < 0.05  # at once, not after waiting
        assert isinstance(shed, Shed) and shed.reason == "deadline"
        assert shed.retry_after_ms == 1000
        assert "cannot start within its deadline" in shed.message
        assert limiter.queued == 0
        busy.release()

    run(scenario())


def test_queued_call_gives_up_before_its_deadline() -> None:
    async def scenario() -> None:
        limiter = AdaptiveLimiter(fixed(1, overload_initial_service_s=0.01))
        busy = await limiter.acquire(Priority.NORMAL, None, "Verify")
        assert isinstance(busy, Slot)
        shed = await limiter.acquire(Priority.NORMAL, 0.1, "Verify")
        assert isinstance(shed, Shed) and shed.reason == "queue_timeout"
        assert limiter.queued == 0
        busy.release()
        assert limiter.in_flight == 0

    run(scenario())


def test_shedding_order_batch_then_normal_then_critical() -> None:
    async def scenario() -> None:
        limiter = AdaptiveLimiter(fixed(1, overload_max_queue=2, overload_initial_service_s=0.001))
        busy = await limiter.acquire(Priority.CRITICAL, None, "x")
        assert isinstance(busy, Slot)
        batch_a = asyncio.create_task(limiter.acquire(Priority.BATCH, 5.0, "batch-a"))
        await asyncio.sleep(0)
        assert limiter.queued == 1
        # Batch may only fill half the queue.
        batch_b = await limiter.acquire(Priority.BATCH, 5.0, "batch-b")
        assert isinstance(batch_b, Shed) and batch_b.reason == "queue_full"
        # Normal, over its share, evicts the queued batch call.
        normal = asyncio.create_task(limiter.acquire(Priority.NORMAL, 5.0, "normal"))
        await asyncio.sleep(0)
        evicted = await batch_a
        assert isinstance(evicted, Shed) and evicted.reason == "evicted"
        critical = asyncio.create_task(limiter.acquire(Priority.CRITICAL, 5.0, "critical"))
        await asyncio.sleep(0)
        assert limiter.queued == 2
        # A full queue of higher priority sheds a newcomer.
        late = await limiter.acquire(Priority.NORMAL, 5.0, "late")
        assert isinstance(late, Shed) and late.reason == "queue_full"
        # Freed slots go to critical first, then normal.
        busy.release()
        first = await critical
        assert isinstance(first, Slot) and first.method == "critical"
        assert not normal.done()
        first.release()
        second = await normal
        assert isinstance(second, Slot) and second.method == "normal"
        second.release()
        assert (limiter.in_flight, limiter.queued) == (0, 0)

    run(scenario())


def test_cancelled_waiter_leaves_no_trace() -> None:
    async def scenario() -> None:
        limiter = AdaptiveLimiter(fixed(1))
        busy = await limiter.acquire(Priority.NORMAL, None, "x")
        assert isinstance(busy, Slot)
        waiter = asyncio.create_task(limiter.acquire(Priority.NORMAL, None, "y"))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert limiter.queued == 0
        busy.release()
        assert limiter.in_flight == 0

    run(scenario())


def test_aimd_cuts_on_slow_calls_and_grows_on_fast_ones() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        limiter = AdaptiveLimiter(
            GatewaySettings(overload_initial_limit=10, overload_min_limit=2, overload_max_limit=20),
            clock=clock,
        )
        # Fast calls while the limit is in use: additive increase.
        for _ in range(30):
            slots = [await limiter.acquire(Priority.NORMAL, None, "Verify") for _ in range(6)]
            clock.now += 0.01
            for slot in slots:
                assert isinstance(slot, Slot)
                slot.release()
        grown = limiter.limit
        assert grown > 10
        # A slow call (10x the baseline) cuts the limit once per "generation".
        slow = [await limiter.acquire(Priority.NORMAL, None, "Verify") for _ in range(5)]
        clock.now += 0.1
        for slot in slow:
            assert isinstance(slot, Slot)
            slot.release()
        assert int(grown * 0.9) - 1 <= limiter.limit < grown  # one cut, not five
        # Dropped (deadline) calls cut it down to the floor, never below.
        for _ in range(40):
            clock.now += 0.001
            slot = await limiter.acquire(Priority.NORMAL, None, "Verify")
            assert isinstance(slot, Slot)
            clock.now += 0.001
            slot.release(dropped=True)
        assert limiter.limit == 2

    run(scenario())


def test_tenants_of_a_class_take_turns() -> None:
    async def scenario() -> None:
        limiter = AdaptiveLimiter(fixed(1, overload_initial_service_s=0.001))
        busy = await limiter.acquire(Priority.NORMAL, None, "x", "other")
        assert isinstance(busy, Slot)
        greedy = [
            asyncio.create_task(limiter.acquire(Priority.NORMAL, 5.0, f"g{i}", "greedy"))
            for i in range(3)
        ]
        await asyncio.sleep(0)
        small = asyncio.create_task(limiter.acquire(Priority.NORMAL, 5.0, "s", "small"))
        await asyncio.sleep(0)
        assert limiter.queued == 4
        order = []
        slot: Slot | Shed = busy
        pending = [*greedy, small]
        while pending:
            assert isinstance(slot, Slot)
            slot.release()
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            assert len(done) == 1
            task = done.pop()
            pending.remove(task)
            slot = task.result()
            assert isinstance(slot, Slot)
            order.append(slot.method)
        assert order == ["g0", "s", "g1", "g2"]

    run(scenario())


def test_full_queue_evicts_the_tenant_with_the_longest_backlog() -> None:
    async def scenario() -> None:
        # Normal calls may fill floor(4 * 0.9) = 3 places.
        limiter = AdaptiveLimiter(fixed(1, overload_max_queue=4, overload_initial_service_s=0.001))
        busy = await limiter.acquire(Priority.NORMAL, None, "x", "other")
        assert isinstance(busy, Slot)
        greedy = [
            asyncio.create_task(limiter.acquire(Priority.NORMAL, 5.0, f"g{i}", "greedy"))
            for i in range(3)
        ]
        await asyncio.sleep(0)
        # The greedy tenant cannot evict itself.
        shed = await limiter.acquire(Priority.NORMAL, 5.0, "g3", "greedy")
        assert isinstance(shed, Shed) and shed.reason == "queue_full"
        small = asyncio.create_task(limiter.acquire(Priority.NORMAL, 5.0, "s", "small"))
        await asyncio.sleep(0)
        evicted = await greedy[2]
        assert isinstance(evicted, Shed) and evicted.reason == "evicted"
        assert limiter.queued == 3 and not small.done()
        busy.release()
        for task in (greedy[0], small, greedy[1]):
            slot = await task
            assert isinstance(slot, Slot)
            slot.release()
        assert (limiter.in_flight, limiter.queued) == (0, 0)

    run(scenario())


def test_wait_estimate_counts_turns_not_another_tenants_backlog() -> None:
    async def scenario() -> None:
        limiter = AdaptiveLimiter(fixed(1, overload_initial_service_s=0.1))
        busy = await limiter.acquire(Priority.NORMAL, None, "x", "other")
        assert isinstance(busy, Slot)
        backlog = [
            asyncio.create_task(limiter.acquire(Priority.NORMAL, 30.0, "g", "greedy"))
            for _ in range(10)
        ]
        await asyncio.sleep(0)
        # greedy: 11 calls ahead, ~1.1 s; small: its turn comes after one greedy call.
        late = await limiter.acquire(Priority.NORMAL, 0.5, "g", "greedy")
        assert isinstance(late, Shed) and late.reason == "deadline"
        small = asyncio.create_task(limiter.acquire(Priority.NORMAL, 0.5, "s", "small"))
        await asyncio.sleep(0)
        assert not small.done() and limiter.queued == 11
        small.cancel()
        for task in backlog:
            task.cancel()
        await asyncio.gather(small, *backlog, return_exceptions=True)
        busy.release()
        assert (limiter.in_flight, limiter.queued) == (0, 0)

    run(scenario())
