"""Overload protection: an adaptive concurrency limit with a priority queue.

Independent of tenant quotas, `AdaptiveLimiter` bounds the calls the gateway
works on at once. The limit adapts by AIMD on latency: a call whose service
time is well above its method's baseline (or that ran out of deadline) cuts
the limit by `overload_backoff`; a fast call made while the limit was in use
raises it by 1/limit (about +1 per limit calls). Calls over the limit wait in
a bounded queue, critical before normal before batch. Within a class the
tenants take turns (round robin, FIFO within a tenant), so a tenant with a
long backlog does not delay one that sends a call now and then.

Shedding is deadline-aware and ordered by priority:

* a call whose deadline has passed, or whose estimated wait is not shorter
  than its remaining deadline, is shed at once and never queued;
* batch may queue only while the queue is under `overload_batch_queue_share`
  of its size, normal under `overload_normal_queue_share`, critical up to full;
* a full queue makes room for a higher-priority call by evicting the newest
  waiter of the lowest class below it, and for a call of the same class by
  evicting the newest waiter of the tenant with the most waiters, when that
  tenant has more than one more than the caller's;
* a waiter still queued just before its deadline (`overload_deadline_margin_s`)
  or after `overload_max_queue_wait_s` is shed, so the caller hears why in time.

Every `Shed` carries a pushback in ms: the estimated time until a slot frees.
The knobs are the ``overload_*`` fields of `tunggal.settings.GatewaySettings`
(``TUNGGAL_GATEWAY_OVERLOAD_*``). Use from one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from gateway.tenants import Priority
from tunggal.settings import GatewaySettings

Clock = Callable[[], float]

_CLASSES: Final = 3  # Priority ranks 0..2
_MAX_PUSHBACK_MS: Final = 30_000


@dataclass(frozen=True, slots=True)
class Shed:
    """The call was not admitted: why ("deadline", "queue_full", "evicted",
    "queue_timeout"), a message for the caller, and when to retry."""

    reason: str
    message: str
    retry_after_ms: int


@dataclass(eq=False, slots=True)
class Slot:
    """Permission to run one call; `release` it when the call ends."""

    _limiter: AdaptiveLimiter | None
    method: str
    started: float
    in_flight_at_start: int

    def release(self, *, dropped: bool = False) -> None:
        """End the call; `dropped` means it ran out of deadline (an overload signal)."""
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._release(self, dropped)


@dataclass(eq=False, slots=True)
class _Waiter:
    rank: int
    method: str
    future: asyncio.Future[Slot | Shed] = field(repr=False)
    tenant: str = ""


class _ClassQueue:
    """The waiters of one priority class: one FIFO per tenant, served round robin."""

    def __init__(self) -> None:
        self._tenants: dict[str, deque[_Waiter]] = {}  # insertion order = turn order
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def waiting(self, tenant: str) -> int:
        """Waiters of `tenant`."""
        queue = self._tenants.get(tenant)
        return len(queue) if queue is not None else 0

    def ahead_of_new(self, tenant: str) -> int:
        """About how many waiters go before a call of `tenant` queued now."""
        turn = self.waiting(tenant) + 1
        return sum(min(len(q), turn) for q in self._tenants.values())

    def append(self, waiter: _Waiter) -> None:
        queue = self._tenants.get(waiter.tenant)
        if queue is None:
            queue = self._tenants[waiter.tenant] = deque()
        queue.append(waiter)
        self._size += 1

    def popleft(self) -> _Waiter:
        """The oldest waiter of the tenant whose turn it is; that tenant goes last."""
        tenant = next(iter(self._tenants))
        queue = self._tenants.pop(tenant)
        waiter = queue.popleft()
        if queue:
            self._tenants[tenant] = queue
        self._size -= 1
        return waiter

    def pop_newest_of_largest(self) -> _Waiter:
        """The newest waiter of the tenant with the most waiters."""
        tenant = max(self._tenants, key=lambda t: len(self._tenants[t]))
        return self._pop_newest(tenant)

    def largest(self) -> tuple[str, int]:
        """(tenant, waiters) of the tenant with the most waiters; ("", 0) when empty."""
        if not self._tenants:
            return "", 0
        tenant = max(self._tenants, key=lambda t: len(self._tenants[t]))
        return tenant, len(self._tenants[tenant])

    def _pop_newest(self, tenant: str) -> _Waiter:
        queue = self._tenants[tenant]
        waiter = queue.pop()
        if not queue:
            del self._tenants[tenant]
        self._size -= 1
        return waiter

    def pop_newest_of(self, tenant: str) -> _Waiter:
        """The newest waiter of `tenant` (which must have one)."""
        return self._pop_newest(tenant)

    def remove(self, waiter: _Waiter) -> None:
        """Drop `waiter`; ValueError when it is not queued."""
        queue = self._tenants.get(waiter.tenant)
        if queue is None:
            raise ValueError("not queued")
        queue.remove(waiter)
        if not queue:
            del self._tenants[waiter.tenant]
        self._size -= 1


class AdaptiveLimiter:
    """Admits calls up to an adaptive concurrency limit; queues or sheds the rest."""

    def __init__(
        self, settings: GatewaySettings | None = None, *, clock: Clock = time.monotonic
    ) -> None:
        self._s = settings or GatewaySettings()
        self._clock = clock
        self._limit = float(self._s.overload_initial_limit)
        self._in_flight = 0
        self._queues: list[_ClassQueue] = [_ClassQueue() for _ in range(_CLASSES)]
        self._service_s = self._s.overload_initial_service_s
        self._baseline: dict[str, float] = {}
        self._last_decrease = -math.inf
        self.shed_count = 0

    @property
    def limit(self) -> int:
        """Calls admitted at once now."""
        return max(1, int(self._limit))

    @property
    def in_flight(self) -> int:
        """Calls admitted and not yet ended."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Calls waiting for a slot, every priority together."""
        return sum(len(q) for q in self._queues)

    def _wait_estimate_s(self, ahead: int) -> float:
        """Time until `ahead` + 1 slots free: one frees every service/limit seconds."""
        return (ahead + 1) * self._service_s / self.limit

    def _shed(self, reason: str, message: str, ahead: int) -> Shed:
        self.shed_count += 1
        pushback = min(_MAX_PUSHBACK_MS, max(1, math.ceil(1000 * self._wait_estimate_s(ahead))))
        return Shed(reason, f"{message}, retry in {pushback} ms", pushback)

    def _grant(self, method: str) -> Slot:
        self._in_flight += 1
        return Slot(self, method, self._clock(), self._in_flight)

    async def acquire(
        self, priority: Priority, time_remaining: float | None, method: str = "", tenant: str = ""
    ) -> Slot | Shed:
        """A slot for one call of `method` by `tenant`, or why it is shed.

        `time_remaining` is the call's remaining deadline in seconds (None: no
        deadline). Waits in the queue only when the wait can end before it.
        """
        rank = priority.rank
        if time_remaining is not None and time_remaining <= 0:
            return self._shed("deadline", f"deadline of {method} already passed", 0)
        if self._in_flight < self.limit and not any(self._queues[: rank + 1]):
            return self._grant(method)
        ahead = sum(len(q) for q in self._queues[:rank]) + self._queues[rank].ahead_of_new(tenant)
        wait_s = self._wait_estimate_s(ahead)
        timeout = self._s.overload_max_queue_wait_s
        if time_remaining is not None:
            usable_s = time_remaining - self._s.overload_deadline_margin_s
            if wait_s >= usable_s:
                return self._shed(
                    "deadline",
                    f"gateway busy: {method} cannot start within its deadline "
                    f"({time_remaining * 1000:.0f} ms left, about {wait_s * 1000:.0f} ms wait)",
                    ahead,
                )
            timeout = min(timeout, usable_s)
        if not self._make_room(rank, tenant):
            return self._shed(
                "queue_full", f"gateway overloaded: {method} ({priority} priority) shed", ahead
            )
        waiter = _Waiter(rank, method, asyncio.get_running_loop().create_future(), tenant)
        self._queues[rank].append(waiter)
        try:
            await asyncio.wait((waiter.future,), timeout=timeout)
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if waiter.future.done():
            return waiter.future.result()
        self._abandon(waiter)
        return self._shed(
            "queue_timeout", f"gateway busy: {method} waited {timeout * 1000:.0f} ms", ahead
        )

    def _make_room(self, rank: int, tenant: str) -> bool:
        """Whether a call of `rank` by `tenant` may queue, evicting someone if the queue is full.

        The victim is the newest waiter of the lowest class below `rank`, else
        of the tenant of the same class with the most waiters when it has more
        than one more than `tenant` (so no tenant crowds out the others).
        """
        size = self._s.overload_max_queue
        share = (1.0, self._s.overload_normal_queue_share, self._s.overload_batch_queue_share)
        queued = self.queued
        if queued < math.floor(size * share[rank]):
            return True
        for lower in range(_CLASSES - 1, rank, -1):
            if self._queues[lower]:
                victim = self._queues[lower].pop_newest_of_largest()
                self._evict(victim, "higher priority", queued)
                return True  # swapped: the queue does not grow
        same = self._queues[rank]
        hog, waiting = same.largest()
        if hog != tenant and waiting > same.waiting(tenant) + 1:
            self._evict(same.pop_newest_of(hog), "a tenant with fewer queued calls", queued)
            return True
        return False

    def _evict(self, victim: _Waiter, by: str, queued: int) -> None:
        victim.future.set_result(
            self._shed("evicted", f"gateway overloaded: {victim.method} evicted by {by}", queued)
        )

    def _abandon(self, waiter: _Waiter) -> None:
        """Drop a waiter that stopped waiting; give back a slot granted meanwhile."""
        with contextlib.suppress(ValueError):
            self._queues[waiter.rank].remove(waiter)
        if waiter.future.done() and not waiter.future.cancelled():
            result = waiter.future.result()
            if isinstance(result, Slot):
                result.release()
        else:
            waiter.future.cancel()

    def _release(self, slot: Slot, dropped: bool) -> None:
        now = self._clock()
        self._in_flight = max(0, self._in_flight - 1)
        self._adapt(slot, now - slot.started, dropped, now)
        self._drain()

    def _adapt(self, slot: Slot, service_s: float, dropped: bool, now: float) -> None:
        """AIMD: cut the limit on a slow or dropped call, grow it on a fast one in a busy period."""
        s = self._s
        self._service_s += 0.1 * (service_s - self._service_s)
        base = self._baseline.get(slot.method)
        if base is None or service_s < base:
            base = service_s
        else:
            base += 0.01 * (service_s - base)  # drift up slowly to follow lasting change
        self._baseline[slot.method] = base
        slow = (
            service_s > base * s.overload_latency_tolerance
            and service_s - base > s.overload_latency_slack_s
        )
        if dropped or slow:
            # Only calls started after the last cut can justify another one.
            if slot.started > self._last_decrease:
                self._limit = max(float(s.overload_min_limit), self._limit * s.overload_backoff)
                self._last_decrease = now
        elif slot.in_flight_at_start * 2 >= self.limit:
            self._limit = min(float(s.overload_max_limit), self._limit + 1.0 / self._limit)

    def _drain(self) -> None:
        """Hand free slots to waiters: highest priority first, tenants in turn, oldest first."""
        for queue in self._queues:
            while queue and self._in_flight < self.limit:
                waiter = queue.popleft()
                if not waiter.future.done():
                    waiter.future.set_result(self._grant(waiter.method))
