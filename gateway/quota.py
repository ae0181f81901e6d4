"""Per-tenant quotas: token bucket, concurrency limit and daily counter.

Each check returns `ALLOW` or a `Rejection` naming the quota ("rate",
"concurrency" or "daily"), its limit and a retry-after in milliseconds.
`QuotaBook` keeps one set of limiters per (tenant, method) and applies a
tenant's `QuotaSpec`, shadow mode included. Time sources are injectable;
nothing here is thread-safe: use it from one event loop. Quotas are per
gateway process: with N gateways a tenant gets N times its limits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from gateway.tenants import QuotaSpec

Clock = Callable[[], float]
"""Seconds as a float: `time.monotonic` for rates, `time.time` (UTC) for days."""

SECONDS_PER_DAY: Final = 86_400
_MAX_RETRY_MS: Final = SECONDS_PER_DAY * 1000


@dataclass(frozen=True, slots=True)
class Allow:
    """The call is admitted."""


ALLOW: Final = Allow()


@dataclass(frozen=True, slots=True)
class Rejection:
    """The call is over a quota: which one, its limit, and when to retry."""

    quota: str
    limit: str
    retry_after_ms: int

    def describe(self) -> str:
        """E.g. ``rate quota 50/s exceeded``."""
        return f"{self.quota} quota {self.limit} exceeded"


Decision = Allow | Rejection


def _ms(seconds: float) -> int:
    """`seconds` as whole milliseconds, rounded up, in [1, one day]."""
    return min(_MAX_RETRY_MS, max(1, math.ceil(seconds * 1000.0)))


class TokenBucket:
    """Admits at most `burst` + `rate` * t calls in any window of t seconds."""

    def __init__(self, rate: float, burst: int, *, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._tokens = float(burst)
        self._last = clock()

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self._rate

    @property
    def burst(self) -> int:
        """The most tokens the bucket holds."""
        return self._burst

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(float(self._burst), self._tokens + elapsed * self._rate)
            self._last = now

    def try_acquire(self, n: float = 1.0) -> Decision:
        """Take `n` tokens, or reject with the time until they will be there."""
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return ALLOW
        return Rejection("rate", f"{self._rate:g}/s", _ms((n - self._tokens) / self._rate))

    def refund(self, n: float = 1.0) -> None:
        """Give back `n` tokens taken by a call that was then rejected elsewhere."""
        self._refill()
        self._tokens = min(float(self._burst), self._tokens + n)

    def reconfigure(self, rate: float, burst: int) -> None:
        """Change the limits, keeping the tokens (capped at the new burst)."""
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._refill()
        self._rate = rate
        self._burst = burst
        self._tokens = min(self._tokens, float(burst))


class ConcurrencyLimiter:
    """At most `limit` calls in flight; retry-after estimated from past hold times."""

    def __init__(self, limit: int, *, default_retry_ms: int = 100) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit
        self._in_flight = 0
        self._mean_hold_s: float | None = None
        self._default_retry_ms = default_retry_ms

    @property
    def limit(self) -> int:
        """The most calls in flight at once."""
        return self._limit

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._in_flight

    def try_acquire(self) -> Decision:
        """Take a slot, or reject when `limit` calls are in flight."""
        if self._in_flight < self._limit:
            self._in_flight += 1
            return ALLOW
        if self._mean_hold_s is None:
            retry_ms = self._default_retry_ms
        else:
            # With `limit` calls each held ~mean, one ends every mean/limit seconds.
            retry_ms = _ms(self._mean_hold_s / self._limit)
        return Rejection("concurrency", f"{self._limit} in flight", retry_ms)

    def release(self, held_s: float | None = None) -> None:
        """Give back a slot held for `held_s` seconds (feeds the retry estimate)."""
        self._in_flight = max(0, self._in_flight - 1)
        if held_s is not None and held_s >= 0:
            mean = self._mean_hold_s
            self._mean_hold_s = held_s if mean is None else mean + 0.1 * (held_s - mean)

    def reconfigure(self, limit: int) -> None:
        """Change the limit; calls already in flight keep their slots."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit


class DailyCounter:
    """At most `limit` calls per UTC day (days of Unix time: reset at 00:00 UTC)."""

    def __init__(self, limit: int, *, clock: Clock = time.time) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._clock = clock
        self._limit = limit
        self._day = self._today()
        self._used = 0

    def _today(self) -> int:
        return int(self._clock() // SECONDS_PER_DAY)

    def _roll(self) -> None:
        day = self._today()
        if day != self._day:
            self._day = day
            self._used = 0

    @property
    def limit(self) -> int:
        """The most calls counted per UTC day."""
        return self._limit

    @property
    def used(self) -> int:
        """Calls counted today."""
        self._roll()
        return self._used

    def try_acquire(self, n: int = 1) -> Decision:
        """Count `n` calls, or reject until the next UTC midnight."""
        self._roll()
        if self._used + n <= self._limit:
            self._used += n
            return ALLOW
        next_midnight = (self._day + 1) * SECONDS_PER_DAY
        return Rejection("daily", f"{self._limit}/day", _ms(next_midnight - self._clock()))

    def refund(self, n: int = 1) -> None:
        """Uncount `n` calls that were then rejected elsewhere."""
        self._roll()
        self._used = max(0, self._used - n)

    def reconfigure(self, limit: int) -> None:
        """Change the limit, keeping today's count."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit


@dataclass(slots=True)
class _Limiters:
    spec: QuotaSpec
    bucket: TokenBucket | None = None
    concurrency: ConcurrencyLimiter | None = None
    daily: DailyCounter | None = None


@dataclass(slots=True)
class Admission:
    """What `QuotaBook.admit` decided: an enforced rejection, shadow rejections, a slot.

    Call `release` once the call ends (it is idempotent and safe after a rejection).
    """

    rejection: Rejection | None = None
    shadow: list[Rejection] = field(default_factory=list)
    _slot: ConcurrencyLimiter | None = None
    _started: float = 0.0
    _clock: Clock = time.monotonic

    @property
    def admitted(self) -> bool:
        """Whether no enforced quota rejected the call."""
        return self.rejection is None

    def release(self) -> None:
        """End the call: give back its concurrency slot, if it holds one."""
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release(self._clock() - self._started)

    def _reject(self, rejection: Rejection) -> Admission:
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()  # not a real hold: keep it out of the retry estimate
        self.rejection = rejection
        return self


class QuotaBook:
    """Quota state of every (tenant, method); limits follow the tenant config in force."""

    def __init__(self, *, clock: Clock = time.monotonic, wall_clock: Clock = time.time) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._entries: dict[tuple[str, str], _Limiters] = {}

    def _limiters(self, tenant_id: str, method: str, spec: QuotaSpec) -> _Limiters:
        key = (tenant_id, method)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Limiters(spec)
            self._configure(entry, spec)
        elif entry.spec != spec:
            self._configure(entry, spec)
        return entry

    def _configure(self, entry: _Limiters, spec: QuotaSpec) -> None:
        """Apply `spec` to `entry`, keeping the state of limits that stay."""
        entry.spec = spec
        if spec.rate is None:
            entry.bucket = None
        elif entry.bucket is None:
            entry.bucket = TokenBucket(spec.rate, spec.bucket_size, clock=self._clock)
        else:
            entry.bucket.reconfigure(spec.rate, spec.bucket_size)
        if spec.concurrency is None:
            entry.concurrency = None
        elif entry.concurrency is None:
            entry.concurrency = ConcurrencyLimiter(spec.concurrency)
        else:
            entry.concurrency.reconfigure(spec.concurrency)
        if spec.daily is None:
            entry.daily = None
        elif entry.daily is None:
            entry.daily = DailyCounter(spec.daily, clock=self._wall_clock)
        else:
            entry.daily.reconfigure(spec.daily)

    def admit(self, tenant_id: str, method: str, spec: QuotaSpec | None) -> Admission:
        """Check concurrency, rate and daily quota of one call, in that order.

        Enforced: the first limit hit rejects and what was taken is given back.
        Shadow: every limit is checked, hits are listed in `shadow`, the call is
        admitted and takes what it can.
        """
        if spec is None:
            return Admission()
        entry = self._limiters(tenant_id, method, spec)
        admission = Admission(_started=self._clock(), _clock=self._clock)
        if entry.concurrency is not None:
            decision = entry.concurrency.try_acquire()
            if isinstance(decision, Rejection):
                if not spec.shadow:
                    return admission._reject(decision)
                admission.shadow.append(decision)
            else:
                admission._slot = entry.concurrency
        if entry.bucket is not None:
            decision = entry.bucket.try_acquire()
            if isinstance(decision, Rejection):
                if not spec.shadow:
                    return admission._reject(decision)
                admission.shadow.append(decision)
        if entry.daily is not None:
            decision = entry.daily.try_acquire()
            if isinstance(decision, Rejection):
                if not spec.shadow:
                    if entry.bucket is not None:
                        entry.bucket.refund()
                    return admission._reject(decision)
                admission.shadow.append(decision)
        return admission
