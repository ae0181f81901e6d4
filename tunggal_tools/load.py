"""`tunggal load`: a ghz-like load generator for the gateway, several tenants at once.

    tunggal load --method Identify --duration 30s --rps 200 --concurrency 64 --key KEY
    tunggal load --method Verify --total 5000 \\
        --tenant bank-x:demo-key-bank-x:150:32 --tenant agency:demo-key-agency:50:16

Each tenant drives its own grpc.aio channels (``--connections`` each), so
one process keeps hundreds of calls in flight. With a target rate (``rps`` >
0) the load is *open loop*: call i of a tenant is due at start + i/rps
whatever happened to earlier calls, and its latency is measured from that
due time. A call that has to wait for one of the tenant's `concurrency`
slots (or for the server's per-connection stream limit) therefore counts the
wait: latency under overload is not hidden by the generator slowing down
(coordinated omission). ``client_lag`` reports how late calls left. With
``rps`` 0 a tenant runs closed loop: `concurrency` workers, each sending its
next call when the last one answered (the way to find the maximum
throughput).

Templates are synthetic (`tunggal_tools.synthetic`, the demo model of `tunggal
local`): Identify and Verify send capture 1 of demo identities 0..N-1 (Verify
against its own subject id), Enroll replaces identities from
``--enroll-offset`` on with their capture 0. Runs are bounded (``--total`` or
``--duration``) and aim at 127.0.0.1 unless ``--allow-remote`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
import grpc.aio
import numpy as np
import numpy.typing as npt

from tunggal.exposure import is_loopback as host_is_loopback
from tunggal.settings import MiB, grpc_message_options
from tunggal.templates import encode_template
from tunggal.v1 import tunggal_pb2 as pb
from tunggal.v1 import tunggal_pb2_grpc as pb_grpc
from tunggal_tools.demo import DEMO_KEYS, DEMO_MODEL
from tunggal_tools.synthetic import FaceModel, subject_id

LOAD_METHODS: Final = ("Identify", "Verify", "Enroll")
MAX_TOTAL: Final = 10_000_000
MAX_DURATION_S: Final = 3600.0
MAX_CONCURRENCY: Final = 10_000
MAX_CONNECTIONS: Final = 64
KEY_ENV: Final = "TUNGGAL_API_KEY"
_OK: Final = grpc.StatusCode.OK
_CODES: Final = {code.value[0]: code for code in grpc.StatusCode}
_MS_NUMBER = re.compile(r"\d+(?:\.\d+)? ms")


class LoadError(ValueError):
    """The load cannot be run as asked (the message says why)."""


@dataclass(frozen=True)
class TenantLoad:
    """One tenant's share of the load: its key, target rate and concurrency."""

    name: str
    key: str | None
    rps: float = 0.0
    concurrency: int = 16

    def __post_init__(self) -> None:
        if not self.name:
            raise LoadError("a tenant needs a name")
        if not (self.rps >= 0 and math.isfinite(self.rps)):
            raise LoadError(f"tenant {self.name}: rps must be >= 0, got {self.rps}")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise LoadError(
                f"tenant {self.name}: concurrency must be 1..{MAX_CONCURRENCY}, "
                f"got {self.concurrency}"
            )


@dataclass(frozen=True)
class LoadConfig:
    """A bounded load: `total` calls over all tenants, or `duration_s` seconds (or both)."""

    address: str
    method: str
    tenants: tuple[TenantLoad, ...]
    total: int | None = None
    duration_s: float | None = None
    timeout_s: float = 10.0
    subjects: int = 100_000
    k: int = 10
    pool: int = 1024
    enroll_offset: int = 10**9
    model: FaceModel = DEMO_MODEL
    seed: int = 0
    allow_remote: bool = False
    connections: int = 1

    def __post_init__(self) -> None:
        if self.method not in LOAD_METHODS:
            raise LoadError(f"method must be one of {', '.join(LOAD_METHODS)}, not {self.method}")
        if not self.tenants:
            raise LoadError("no tenant to drive")
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise LoadError("tenant names must differ")
        if self.total is None and self.duration_s is None:
            raise LoadError("give --total or --duration: a load must be bounded")
        if self.total is not None and not 1 <= self.total <= MAX_TOTAL:
            raise LoadError(f"total must be 1..{MAX_TOTAL:,}")
        if self.duration_s is not None and not 0 < self.duration_s <= MAX_DURATION_S:
            raise LoadError(f"duration must be > 0 and at most {MAX_DURATION_S:.0f} s")
        if self.timeout_s <= 0:
            raise LoadError("timeout must be > 0")
        if self.subjects < 1 or self.pool < 1:
            raise LoadError("subjects and pool must be >= 1")
        if not 1 <= self.connections <= MAX_CONNECTIONS:
            raise LoadError(f"connections must be 1..{MAX_CONNECTIONS}")
        if not self.allow_remote and not is_loopback(self.address):
            raise LoadError(
                f"{self.address} is not a loopback address; pass --allow-remote to load "
                "another machine (only one you are allowed to load)"
            )

    def shares(self) -> list[int | None]:
        """Calls per tenant: `total` split by target rate (evenly if any runs closed loop)."""
        if self.total is None:
            return [None] * len(self.tenants)
        rates = [t.rps for t in self.tenants]
        weights = rates if all(r > 0 for r in rates) else [1.0] * len(rates)
        raw = [self.total * w / sum(weights) for w in weights]
        shares = [math.floor(x) for x in raw]
        order = sorted(range(len(raw)), key=lambda i: shares[i] - raw[i])
        for i in order[: self.total - sum(shares)]:
            shares[i] += 1
        return list(shares)


def is_loopback(address: str) -> bool:
    """Whether host:port (or a unix: socket) names this machine only."""
    if address.startswith("unix:"):
        return True
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host_is_loopback(host)


def parse_duration(text: str) -> float:
    """``30s``, ``2m``, ``500ms``, ``1h`` or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 2m, 500ms)")
    value = float(match.group(1))
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[match.group(2)]
    return value * scale


_NAME_AND_KEY: Final = 2  # the fields of a tenant spec before its numbers
_TENANT_NUMBERS: Final = 2  # rps and concurrency


def parse_tenant(text: str, rps: float, concurrency: int) -> TenantLoad:
    """``name[:key[:rps[:concurrency]]]``; a missing key is the demo key of `name`, if any.

    An empty key (``name::10:4``) sends no key; ``env:VAR`` reads the key from $VAR.
    """
    parts = text.split(":")
    name = parts[0]
    numbers: list[str] = []
    while (
        len(parts) > _NAME_AND_KEY
        and len(numbers) < _TENANT_NUMBERS
        and re.fullmatch(r"\d+(\.\d+)?", parts[-1])
    ):
        numbers.insert(0, parts.pop())
    key: str | None = ":".join(parts[1:]) if len(parts) > 1 else DEMO_KEYS.get(name)
    if key is not None and key.startswith("env:"):
        var = key[4:]
        if var not in os.environ:
            raise LoadError(f"tenant {name}: ${var} is not set")
        key = os.environ[var]
    try:
        if numbers:
            rps = float(numbers[0])
        if len(numbers) > 1:
            concurrency = int(numbers[1])
    except ValueError as exc:
        raise LoadError(f"tenant {text!r}: {exc}") from None
    return TenantLoad(name, key or None, rps, concurrency)


# ---- results ----------------------------------------------------------------------


@dataclass
class Samples:
    """What one tenant's calls did: per call, status code, latency, lateness."""

    codes: list[int] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    lag_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    unsent: int = 0

    def add(self, code: grpc.StatusCode, latency_s: float, lag_s: float, message: str) -> None:
        """Record one answered call; errors count by code and message (times read "N ms")."""
        self.codes.append(code.value[0])
        self.latency_s.append(latency_s)
        self.lag_s.append(lag_s)
        if code != _OK:
            text = _MS_NUMBER.sub("N ms", message)[:200]
            self.errors[f"{code.name}: {text}"] += 1

    def merge(self, other: Samples) -> None:
        """Add `other`'s calls to these."""
        self.codes += other.codes
        self.latency_s += other.latency_s
        self.lag_s += other.lag_s
        self.errors.update(other.errors)
        self.sent += other.sent
        self.unsent += other.unsent


@dataclass(frozen=True)
class LatencyStats:
    """Latency summary in milliseconds (all zero when there is no call)."""

    count: int
    avg_ms: float
    fastest_ms: float
    slowest_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float] | np.ndarray[Any, Any]) -> LatencyStats:
        """The summary of latencies given in `seconds`."""
        arr = np.asarray(seconds, dtype=np.float64) * 1000.0
        if arr.size == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        p50, p90, p99, p999 = (float(x) for x in np.percentile(arr, [50, 90, 99, 99.9]))
        return cls(
            int(arr.size), float(arr.mean()), float(arr.min()), float(arr.max()),
            p50, p90, p99, p999,
        )  # fmt: skip


@dataclass(frozen=True)
class Summary:
    """One tenant's (or the whole run's) figures."""

    name: str
    target_rps: float
    concurrency: int
    sent: int
    unsent: int
    completed: int
    ok: int
    elapsed_s: float
    latency: LatencyStats
    ok_latency: LatencyStats
    client_lag: LatencyStats
    codes: dict[str, int]
    errors: list[tuple[int, str]]

    @property
    def rps(self) -> float:
        """Calls answered per second (any status)."""
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def goodput_rps(self) -> float:
        """Calls answered OK per second."""
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def success_rate(self) -> float:
        """OK calls over calls sent (1.0 when none was sent)."""
        return self.ok / self.sent if self.sent else 1.0

    @classmethod
    def of(
        cls, name: str, target_rps: float, concurrency: int, samples: Samples, elapsed_s: float
    ) -> Summary:
        """Summarise `samples` of a run that took `elapsed_s` (the five commonest errors)."""
        codes = np.asarray(samples.codes, dtype=np.int64)
        latency = np.asarray(samples.latency_s, dtype=np.float64)
        counts = Counter(_CODES.get(int(c), grpc.StatusCode.UNKNOWN).name for c in codes)
        ok = int((codes == _OK.value[0]).sum())
        return cls(
            name=name,
            target_rps=target_rps,
            concurrency=concurrency,
            sent=samples.sent,
            unsent=samples.unsent,
            completed=int(codes.size),
            ok=ok,
            elapsed_s=elapsed_s,
            latency=LatencyStats.of(latency),
            ok_latency=LatencyStats.of(latency[codes == _OK.value[0]]),
            client_lag=LatencyStats.of(samples.lag_s),
            codes=dict(counts.most_common()),
            errors=[(n, text) for text, n in samples.errors.most_common(5)],
        )

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready values, rounded, latencies in ms."""
        return {
            "name": self.name,
            "target_rps": self.target_rps,
            "concurrency": self.concurrency,
            "sent": self.sent,
            "unsent": self.unsent,
            "completed": self.completed,
            "ok": self.ok,
            "elapsed_s": round(self.elapsed_s, 3),
            "rps": round(self.rps, 2),
            "goodput_rps": round(self.goodput_rps, 2),
            "success_rate": self.success_rate,
            "latency_ms": _round(self.latency.__dict__),
            "ok_latency_ms": _round(self.ok_latency.__dict__),
            "client_lag_ms": _round(self.client_lag.__dict__),
            "codes": self.codes,
            "errors": [{"count": n, "message": text} for n, text in self.errors],
        }


def _round(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k.removesuffix("_ms"): round(v, 3) if isinstance(v, float) else v for k, v in values.items()
    }


@dataclass(frozen=True)
class LoadReport:
    """The result of a run: the whole and each tenant."""

    address: str
    method: str
    elapsed_s: float
    total: Summary
    tenants: list[Summary]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (`Summary.to_dict` for each part)."""
        return {
            "address": self.address,
            "method": self.method,
            "elapsed_s": round(self.elapsed_s, 3),
            "total": self.total.to_dict(),
            "tenants": [t.to_dict() for t in self.tenants],
        }

    def tenant(self, name: str) -> Summary:
        """The summary of tenant `name`."""
        for summary in self.tenants:
            if summary.name == name:
                return summary
        raise KeyError(name)

    def render(self) -> str:
        """A ghz-like text summary."""
        t = self.total
        lat = t.latency
        lines = [
            "",
            "Summary:",
            f"  Method:       {self.method} at {self.address}",
            f"  Count:        {t.completed}" + (f" ({t.unsent} not sent)" if t.unsent else ""),
            f"  Total:        {self.elapsed_s:.2f} s",
            f"  Slowest:      {lat.slowest_ms:.2f} ms",
            f"  Fastest:      {lat.fastest_ms:.2f} ms",
            f"  Average:      {lat.avg_ms:.2f} ms",
            f"  Requests/sec: {t.rps:.2f}  (OK/sec {t.goodput_rps:.2f})",
            "",
            "Latency distribution (all calls; open loop: from each call's due time):",
            f"  50 % in {lat.p50_ms:.2f} ms",
            f"  90 % in {lat.p90_ms:.2f} ms",
            f"  99 % in {lat.p99_ms:.2f} ms",
            f"  99.9 % in {lat.p999_ms:.2f} ms",
            "",
            "Status code distribution:",
        ]
        width = max((len(c) for c in t.codes), default=2) + 2
        lines += [f"  {'[' + c + ']':<{width}} {n} responses" for c, n in t.codes.items()]
        if t.errors:
            lines += ["", "Error distribution:"]
            lines += [f"  [{n}]  {text}" for n, text in t.errors]
        lines += [
            "",
            "Per tenant (latency of OK calls, ms):",
            (
                f"  {'tenant':<14} {'target/s':>8} {'conc':>5} {'sent':>8} {'ok %':>8} "
                f"{'rps':>8} {'ok/s':>8} {'p50':>8} {'p90':>8} {'p99':>8} {'lag p99':>8}  codes"
            ),
        ]
        for s in self.tenants:
            codes = " ".join(f"{c}={n}" for c, n in s.codes.items())
            target = f"{s.target_rps:.1f}" if s.target_rps else "max"
            lines.append(
                f"  {s.name:<14} {target:>8} {s.concurrency:>5} {s.sent:>8} "
                f"{100 * s.success_rate:>8.2f} {s.rps:>8.1f} {s.goodput_rps:>8.1f} "
                f"{s.ok_latency.p50_ms:>8.2f} {s.ok_latency.p90_ms:>8.2f} "
                f"{s.ok_latency.p99_ms:>8.2f} {s.client_lag.p99_ms:>8.2f}  {codes}"
            )
        return "\n".join(lines)


# ---- requests ---------------------------------------------------------------------


def build_requests(config: LoadConfig) -> list[Any]:
    """`config.pool` distinct request messages of `config.method`, cycled through."""
    rng = np.random.default_rng(config.seed)
    n = min(config.pool, config.subjects) if config.method != "Enroll" else config.pool
    if config.method == "Enroll":
        ids = [config.enroll_offset + i for i in range(n)]
        samples = config.model.samples(ids, 0)
        return [
            pb.EnrollRequest(
                subject_id=subject_id(i),
                templates=[encode_template(row)],
                mode=pb.ENROLL_MODE_REPLACE,
            )
            for i, row in zip(ids, samples, strict=True)
        ]
    ids = [int(i) for i in rng.choice(config.subjects, size=n, replace=False)]
    probes = config.model.samples(ids, 1)
    if config.method == "Verify":
        return [
            pb.VerifyRequest(subject_id=subject_id(i), probe=pb.Probe(template=encode_template(p)))
            for i, p in zip(ids, probes, strict=True)
        ]
    return identify_requests(probes, config.k)


def identify_requests(probes: npt.ArrayLike, k: int) -> list[pb.IdentifyRequest]:
    """One Identify request (top `k`) per probe row."""
    return [
        pb.IdentifyRequest(probe=pb.Probe(template=encode_template(p)), k=k)
        for p in np.asarray(probes, dtype=np.float32)
    ]


# ---- the generator ----------------------------------------------------------------


Call = Callable[..., Any]


async def _one(
    call: Call,
    request: Any,
    metadata: tuple[tuple[str, str], ...],
    timeout_s: float,
    due: float,
    samples: Samples,
) -> None:
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    message = ""
    try:
        await call(request, timeout=timeout_s, metadata=metadata)
        code = _OK
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        message = exc.details() or ""
    samples.add(code, loop.time() - due, sent_at - due, message)


async def _open_loop(
    tenant: TenantLoad,
    calls: list[Call],
    requests: list[Any],
    metadata: tuple[tuple[str, str], ...],
    config: LoadConfig,
    count: int | None,
    start: float,
    samples: Samples,
) -> None:
    """Call i is due at start + i/rps; a call waiting for a slot counts the wait."""
    loop = asyncio.get_running_loop()
    end = start + config.duration_s if config.duration_s is not None else math.inf
    give_up = end + config.timeout_s  # stop draining a client-side backlog after this
    slots = asyncio.Semaphore(tenant.concurrency)
    tasks: set[asyncio.Task[None]] = set()

    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        slots.release()

    # Tenants at the same rate should not fire in lockstep.
    offset = (zlib.crc32(tenant.name.encode()) % 997) / 997 / tenant.rps
    i = 0
    while count is None or i < count:
        due = start + offset + i / tenant.rps
        if due >= end:
            break
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await asyncio.wait_for(slots.acquire(), timeout=max(0.0, give_up - loop.time()))
        except TimeoutError:
            break
        samples.sent += 1
        task = asyncio.create_task(
            _one(
                calls[i % len(calls)],
                requests[i % len(requests)],
                metadata,
                config.timeout_s,
                due,
                samples,
            )
        )
        tasks.add(task)
        task.add_done_callback(done)
        i += 1
    if count is not None:
        samples.unsent = count - i
    elif config.duration_s is not None:
        samples.unsent = max(0, math.ceil((end - start - offset) * tenant.rps) - i)
    if tasks:
        await asyncio.gather(*tasks)


async def _closed_loop(
    tenant: TenantLoad,
    calls: list[Call],
    requests: list[Any],
    metadata: tuple[tuple[str, str], ...],
    config: LoadConfig,
    count: int | None,
    start: float,
    samples: Samples,
) -> None:
    """`concurrency` workers, each sending its next call when the last one answered."""
    loop = asyncio.get_running_loop()
    end = start + config.duration_s if config.duration_s is not None else math.inf
    counter = 0

    async def worker() -> None:
        nonlocal counter
        while (count is None or counter < count) and loop.time() < end:
            i = counter
            counter += 1
            samples.sent += 1
            now = loop.time()
            call = calls[i % len(calls)]
            await _one(call, requests[i % len(requests)], metadata, config.timeout_s, now, samples)

    await asyncio.gather(*(worker() for _ in range(tenant.concurrency)))


def _method(stub: pb_grpc.MatcherAsyncStub, name: str) -> Call:
    call: Call = getattr(stub, name)
    return call


async def generate(config: LoadConfig, requests: list[Any] | None = None) -> LoadReport:
    """Run the load in the current event loop and summarise it."""
    requests = requests if requests is not None else build_requests(config)
    options = [
        *grpc_message_options(16 * MiB),
        ("grpc.use_local_subchannel_pool", 1),  # one connection per tenant
    ]
    per = config.connections
    channels = [
        grpc.aio.insecure_channel(config.address, options=options)
        for _ in range(per * len(config.tenants))
    ]
    try:
        for channel in channels:
            try:
                await asyncio.wait_for(channel.channel_ready(), timeout=10)
            except TimeoutError:
                raise LoadError(f"cannot connect to {config.address}") from None
        per_tenant = [Samples() for _ in config.tenants]
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        runs = []
        for t, (tenant, count, samples) in enumerate(
            zip(config.tenants, config.shares(), per_tenant, strict=True)
        ):
            calls = [
                _method(pb_grpc.MatcherStub(channel), config.method)
                for channel in channels[t * per : (t + 1) * per]
            ]
            metadata: tuple[tuple[str, str], ...] = (
                (("authorization", f"Bearer {tenant.key}"),) if tenant.key else ()
            )
            drive = _open_loop if tenant.rps > 0 else _closed_loop
            runs.append(drive(tenant, calls, requests, metadata, config, count, start, samples))
        await asyncio.sleep(max(0.0, start - loop.time()))
        wall0 = time.perf_counter()
        await asyncio.gather(*runs)
        elapsed = time.perf_counter() - wall0
    finally:
        for channel in channels:
            await channel.close(None)
    if config.duration_s is not None and config.total is None:
        # Rates over the offered window, not the tail drained after it.
        elapsed = min(elapsed, config.duration_s) if elapsed > 0 else config.duration_s
    summaries = [
        Summary.of(t.name, t.rps, t.concurrency, s, elapsed)
        for t, s in zip(config.tenants, per_tenant, strict=True)
    ]
    merged = Samples()
    for s in per_tenant:
        merged.merge(s)
    total = Summary.of(
        "total",
        sum(t.rps for t in config.tenants),
        sum(t.concurrency for t in config.tenants),
        merged,
        elapsed,
    )
    return LoadReport(config.address, config.method, elapsed, total, summaries)


def run_load(config: LoadConfig) -> LoadReport:
    """`generate` in a fresh event loop."""
    return asyncio.run(generate(config))


# ---- command line -----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `tunggal load`."""
    parser.add_argument("--address", default="127.0.0.1:50051", help="gateway host:port")
    parser.add_argument("--method", choices=LOAD_METHODS, default="Identify")
    parser.add_argument("--total", "-n", type=int, help="calls over all tenants")
    parser.add_argument(
        "--duration", "-z", type=parse_duration, help="how long to send (30s, 2m, ...)"
    )
    parser.add_argument(
        "--concurrency", "-c", type=int, default=16,
        help="calls in flight at most, per tenant (default 16)",
    )  # fmt: skip
    parser.add_argument(
        "--rps", type=float, default=0.0,
        help="target calls/s per tenant, open loop (default 0: closed loop, as fast as it goes)",
    )  # fmt: skip
    parser.add_argument(
        "--tenant", action="append", default=[], metavar="NAME[:KEY[:RPS[:CONCURRENCY]]]",
        help="a tenant to drive (repeat for several); no KEY: the demo key of NAME; "
        "KEY env:VAR reads $VAR; RPS/CONCURRENCY default to --rps/--concurrency",
    )  # fmt: skip
    parser.add_argument("--key", help=f"API key when no --tenant is given (default ${KEY_ENV})")
    parser.add_argument("--timeout", type=parse_duration, default=10.0, help="per-call deadline")
    parser.add_argument(
        "--connections", type=int, default=1,
        help="connections per tenant, calls spread over them in turn (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--subjects", type=int, default=100_000,
        help="probes come from demo identities 0..N-1 (default 100000, as `tunggal local`)",
    )  # fmt: skip
    parser.add_argument("-k", type=int, default=10, help="Identify: candidates asked")
    parser.add_argument(
        "--enroll-offset", type=int, default=10**9,
        help="Enroll: identities from this number on (replace mode)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --address"
    )


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    """The LoadConfig of parsed `tunggal load` flags."""
    if args.tenant:
        tenants = tuple(parse_tenant(t, args.rps, args.concurrency) for t in args.tenant)
    else:
        key = args.key if args.key is not None else os.environ.get(KEY_ENV)
        tenants = (TenantLoad("default", key or None, args.rps, args.concurrency),)
    total = args.total
    if total is None and args.duration is None:
        total = 200
    return LoadConfig(
        address=args.address,
        method=args.method,
        tenants=tenants,
        total=total,
        duration_s=args.duration,
        timeout_s=args.timeout,
        subjects=args.subjects,
        k=args.k,
        enroll_offset=args.enroll_offset,
        allow_remote=args.allow_remote,
        connections=args.connections,
    )


def main(args: argparse.Namespace) -> int:
    """Run `tunggal load` with parsed flags; 0, or 1 when it could not run."""
    try:
        config = config_from_args(args)
        if not args.json:
            bound = (
                f"{config.total} calls" if config.total is not None else f"{config.duration_s} s"
            )
            names = ", ".join(
                f"{t.name} ({f'{t.rps:g}/s' if t.rps else 'closed loop'}, c={t.concurrency})"
                for t in config.tenants
            )
            print(f"{config.method} load on {config.address}, {bound}: {names} ...")
        report = run_load(config)
    except LoadError as exc:
        print(f"tunggal load: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.render())
    return 0
