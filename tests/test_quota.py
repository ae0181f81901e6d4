"""Quota primitives: token bucket, concurrency limiter, daily counter, QuotaBook."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.quota import (
    ALLOW,
    ConcurrencyLimiter,
    DailyCounter,
    QuotaBook,
    Rejection,
    TokenBucket,
)
from gateway.tenants import QuotaSpec

DAY = 86_400.0


class FakeClock:
    """A settable time source."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- token bucket -------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    rate=st.floats(min_value=0.1, max_value=200.0),
    burst=st.integers(min_value=1, max_value=40),
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=0.5), st.integers(min_value=0, max_value=8)),
        min_size=1,
        max_size=60,
    ),
)
def test_bucket_never_admits_more_than_burst_plus_rate_times_window(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock=clock)
    admitted: list[float] = []
    for dt, attempts in steps:
        clock.advance(dt)
        admitted.extend(clock.now for _ in range(attempts) if bucket.try_acquire() is ALLOW)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            window = admitted[j] - start
            count = j - i + 1
            assert count <= burst + rate * window + 1e-6, (count, burst, rate, window)


@settings(max_examples=100, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=100.0),
    burst=st.integers(min_value=1, max_value=30),
    k=st.integers(min_value=1, max_value=30),
)
def test_bucket_refills_at_rate(rate: float, burst: int, k: int) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock=clock)
    assert all(bucket.try_acquire() is ALLOW for _ in range(burst))
    rejected = bucket.try_acquire()
    assert isinstance(rejected, Rejection)
    assert rejected.quota == "rate"
    assert abs(rejected.retry_after_ms - 1000 / rate) <= 1
    k = min(k, burst)
    clock.advance(k / rate + 1e-9)
    got = 0
    while bucket.try_acquire() is ALLOW:
        got += 1
    assert got == k


def test_bucket_retry_after_is_enough() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4.0, 2, clock=clock)
    bucket.try_acquire()
    bucket.try_acquire()
    rejected = bucket.try_acquire()
    assert isinstance(rejected, Rejection)
    assert rejected.retry_after_ms == 250
    assert rejected.describe() == "rate quota 4/s exceeded"
    clock.advance(0.249)
    assert isinstance(bucket.try_acquire(), Rejection)
    clock.advance(0.001)
    assert bucket.try_acquire() is ALLOW


def test_bucket_refund_and_reconfigure() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, 5, clock=clock)
    for _ in range(5):
        bucket.try_acquire()
    bucket.refund()
    assert bucket.tokens == pytest.approx(1.0)
    bucket.refund(10)
    assert bucket.tokens == pytest.approx(5.0)  # never above burst
    bucket.reconfigure(10.0, 2)
    assert bucket.tokens == pytest.approx(2.0)
    with pytest.raises(ValueError, match="rate must be > 0"):
        TokenBucket(0.0, 1)


def test_bucket_ignores_clock_going_backwards() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, 1, clock=clock)
    bucket.try_acquire()
    clock.advance(-100.0)
    assert isinstance(bucket.try_acquire(), Rejection)
    clock.advance(100.0)
    assert isinstance(bucket.try_acquire(), Rejection)
    clock.advance(1.0)
    assert bucket.try_acquire() is ALLOW


# --- concurrency ----------------------------------------------------------------


def test_concurrency_limit_and_retry_estimate() -> None:
    limiter = ConcurrencyLimiter(2, default_retry_ms=77)
    assert limiter.try_acquire() is ALLOW
    assert limiter.try_acquire() is ALLOW
    rejected = limiter.try_acquire()
    assert isinstance(rejected, Rejection)
    assert (rejected.quota, rejected.limit, rejected.retry_after_ms) == (
        "concurrency",
        "2 in flight",
        77,
    )
    limiter.release(0.4)  # one call held 400 ms: with 2 slots one frees every ~200 ms
    assert limiter.try_acquire() is ALLOW
    rejected = limiter.try_acquire()
    assert isinstance(rejected, Rejection)
    assert rejected.retry_after_ms == 200
    limiter.release()
    limiter.release()
    limiter.release()  # extra releases never go negative
    assert limiter.in_flight == 0


# --- daily ------------------------------------------------------------------------


def test_daily_counter_resets_at_utc_midnight() -> None:
    clock = FakeClock(19_000 * DAY + DAY - 0.5)  # 23:59:59.5 UTC
    daily = DailyCounter(2, clock=clock)
    assert daily.try_acquire() is ALLOW
    assert daily.try_acquire() is ALLOW
    rejected = daily.try_acquire()
    assert isinstance(rejected, Rejection)
    assert (rejected.quota, rejected.limit, rejected.retry_after_ms) == ("daily", "2/day", 500)
    clock.advance(0.5)  # 00:00:00 UTC
    assert daily.used == 0
    assert daily.try_acquire() is ALLOW
    daily.refund()
    assert daily.used == 0


@settings(max_examples=100, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0.0, max_value=DAY / 3), min_size=1, max_size=80),
)
def test_daily_counter_never_exceeds_limit_per_day(limit: int, gaps: list[float]) -> None:
    clock = FakeClock(19_000 * DAY)
    daily = DailyCounter(limit, clock=clock)
    per_day: dict[int, int] = {}
    for gap in gaps:
        clock.advance(gap)
        if daily.try_acquire() is ALLOW:
            day = int(clock.now // DAY)
            per_day[day] = per_day.get(day, 0) + 1
    assert all(n <= limit for n in per_day.values())


# --- QuotaBook ------------------------------------------------------------------------


def test_book_rejection_takes_nothing() -> None:
    clock, wall = FakeClock(), FakeClock(19_000 * DAY)
    book = QuotaBook(clock=clock, wall_clock=wall)
    spec = QuotaSpec(rate=1.0, burst=1, concurrency=5, daily=10)
    first = book.admit("t", "Verify", spec)
    assert first.admitted
    first.release()
    second = book.admit("t", "Verify", spec)
    assert second.rejection is not None and second.rejection.quota == "rate"
    second.release()  # harmless after a rejection
    # The rate rejection neither counted toward the day nor kept a slot.
    clock.advance(1.0)
    for _ in range(9):
        ok = book.admit("t", "Verify", spec)
        assert ok.admitted
        ok.release()
        clock.advance(1.0)
    over = book.admit("t", "Verify", spec)
    assert over.rejection is not None and over.rejection.quota == "daily"
    # ...and the daily rejection gave its token back.
    wall.advance(DAY)
    assert book.admit("t", "Verify", spec).admitted


def test_book_concurrency_slot_held_until_release() -> None:
    book = QuotaBook()
    spec = QuotaSpec(concurrency=1)
    held = book.admit("t", "Identify", spec)
    assert held.admitted
    blocked = book.admit("t", "Identify", spec)
    assert blocked.rejection is not None and blocked.rejection.quota == "concurrency"
    assert book.admit("other", "Identify", spec).admitted  # per tenant
    held.release()
    held.release()  # idempotent
    assert book.admit("t", "Identify", spec).admitted


def test_book_shadow_admits_and_reports() -> None:
    clock = FakeClock()
    book = QuotaBook(clock=clock)
    spec = QuotaSpec(rate=1.0, burst=1, concurrency=1, shadow=True)
    first = book.admit("t", "Verify", spec)
    assert first.admitted and not first.shadow
    second = book.admit("t", "Verify", spec)
    assert second.admitted
    assert sorted(r.quota for r in second.shadow) == ["concurrency", "rate"]
    second.release()
    first.release()


def test_book_reconfigure_keeps_state() -> None:
    clock, wall = FakeClock(), FakeClock(19_000 * DAY)
    book = QuotaBook(clock=clock, wall_clock=wall)
    assert book.admit("t", "Verify", QuotaSpec(daily=3)).admitted
    assert book.admit("t", "Verify", QuotaSpec(daily=3)).admitted
    # A reload that lowers the limit must not reset today's count.
    rejected = book.admit("t", "Verify", QuotaSpec(daily=2))
    assert rejected.rejection is not None and rejected.rejection.quota == "daily"
    assert book.admit("t", "Verify", None).admitted  # no quota: unlimited
