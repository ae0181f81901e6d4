"""Outage rehearsal: a greedy tenant floods Identify; do the others notice?

    python -m bench.overload [--subjects 20000] [--overload-s 60] [--no-write]

Not part of CI (it takes a few minutes and wants the machine to itself). It:

  1. starts a local cluster (gateway + 2 nodes, real processes) with a tenants
     file generated for the run, and enrolls a demo gallery (--subjects);
  2. measures capacity C: the most Identify calls/s answered OK, closed loop
     at a few concurrencies (one unlimited critical tenant);
  3. rewrites the tenants file for the rehearsal and reloads it (SIGHUP):
     `greedy` may make --greedy-quota x C Identify/s, `normal-1..3` 0.2 C
     each (twice what they will ask), at normal priority (greedy: --greedy-priority);
  4. runs the three normal tenants alone at 0.1 C each: their unloaded p99;
  5. measures what the gateway spends (CPU time, /proc/<pid>/stat) per served
     call, per call rejected by quota and per call without a key;
  6. offers 1.5 C for --overload-s seconds, open loop (tunggal_tools.load): greedy
     asks 1.2 C, the normal tenants 0.1 C each, and samples the processes'
     RSS at start, middle and end.

Targets: in-quota tenants keep >= 99.9 % success and p99 <= 2x unloaded;
total goodput >= 90 % of C; RSS flat; a rejected call costs the gateway
< 5 % of a served one. Results are printed and appended to the day's run
file under docs/benchmarks/ with the machine. Load generator, gateway and nodes share
the machine's cores: on a small machine the generator's own CPU is part of
what limits the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.report import command_line, cpu_seconds, log, machine, now, publish, rss_bytes
from gateway.tenants import Tenant, dump_tenants, hash_key
from tunggal.client import TunggalClient, bearer
from tunggal.settings import GatewaySettings
from tunggal_tools.demo import DEMO_MODEL, seed
from tunggal_tools.load import LoadConfig, LoadReport, TenantLoad, build_requests, generate
from tunggal_tools.localcluster import LocalCluster

NORMALS = ("normal-1", "normal-2", "normal-3")


@dataclass
class Keys:
    """The run's API keys, fresh per run."""

    loader: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    greedy: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    normals: dict[str, str] = field(
        default_factory=lambda: {n: secrets.token_urlsafe(24) for n in NORMALS}
    )
    limited: str = field(default_factory=lambda: secrets.token_urlsafe(24))


def tenant(
    tenant_id: str, key: str, methods: list[str], priority: str, quotas: dict[str, Any]
) -> Tenant:
    """A tenants-file entry for `key` (stored as its SHA-256)."""
    return Tenant.model_validate(
        {
            "id": tenant_id,
            "api_key_sha256": [hash_key(key)],
            "methods": methods,
            "priority": priority,
            "quotas": quotas,
        }
    )


def write_tenants(
    path: Path,
    keys: Keys,
    capacity: float | None,
    greedy_quota: float,
    greedy_priority: str = "normal",
) -> None:
    """The loader alone (capacity unknown yet), or the rehearsal's tenants for `capacity`."""
    tenants = [tenant("loader", keys.loader, ["EnrollBatch", "Stats", "Identify"], "critical", {})]
    if capacity is not None:
        greedy_rate = greedy_quota * capacity
        tenants.append(
            tenant(
                "greedy",
                keys.greedy,
                ["Identify"],
                greedy_priority,
                {"Identify": {"rate": round(greedy_rate, 2), "burst": math.ceil(greedy_rate / 10)}},
            )
        )
        for name in NORMALS:
            rate = 0.2 * capacity
            tenants.append(
                tenant(
                    name,
                    keys.normals[name],
                    ["Identify"],
                    "normal",
                    {"Identify": {"rate": round(rate, 2), "burst": math.ceil(rate)}},
                )
            )
        tenants.append(
            # Every call but the first is over quota: the cost of a quota rejection.
            tenant("limited", keys.limited, ["Identify"], "normal", {"Identify": {"rate": 0.001}})
        )
    staged = path.with_suffix(".new")
    staged.write_text(dump_tenants(tenants))
    staged.replace(path)


def settle(client: TunggalClient, growth: float = 1.5, timeout: float = 600) -> None:
    """Wait until every node has calibrated for about its current size."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = client.stats()
        calibrated = [getattr(s, "calibrated_templates", None) for s in stats]
        if all(c is None for c in calibrated):
            return
        if all(s.templates < (c or 0) * growth for s, c in zip(stats, calibrated, strict=True)):
            return
        time.sleep(1.0)
    log("warning: nodes did not finish calibrating; measuring anyway")


def wait_reloaded(address: str, key: str, timeout: float = 30.0) -> None:
    """Wait until the gateway knows `key` (the reloaded tenants file is in force)."""
    deadline = time.monotonic() + timeout
    probe = DEMO_MODEL.samples([0], 1)[0]
    with TunggalClient(address, timeout=10, metadata=bearer(key)) as client:
        while True:
            try:
                client.identify(probe, k=1)
            except grpc.RpcError as err:
                code: Any = err.code()
                if code != grpc.StatusCode.UNAUTHENTICATED or time.monotonic() > deadline:
                    raise
            else:
                return
            time.sleep(0.1)


@dataclass
class Phase:
    """A load run with the CPU time the processes spent over it."""

    report: LoadReport
    gateway_cpu_s: float
    nodes_cpu_s: float
    client_cpu_s: float
    wall_s: float

    def cores(self) -> str:
        """CPU used over the run, in cores: gateway / nodes / load generator."""
        w = self.wall_s
        return (
            f"{self.gateway_cpu_s / w:.2f} / {self.nodes_cpu_s / w:.2f} / "
            f"{self.client_cpu_s / w:.2f}"
        )


class Rehearsal:
    """The running cluster's processes and the load phases run against it."""

    def __init__(self, args: argparse.Namespace, cluster: LocalCluster, keys: Keys) -> None:
        self.args = args
        self.cluster = cluster
        self.keys = keys
        proc = cluster.gateway_spec.proc
        assert proc is not None
        self.gateway_pid = proc.pid
        self.node_pids = [s.proc.pid for s in cluster.node_specs if s.proc is not None]
        self.requests: list[Any] = []

    def config(self, tenants: list[TenantLoad], duration_s: float, timeout_s: float) -> LoadConfig:
        """The load generator's configuration of one Identify phase."""
        return LoadConfig(
            address=self.cluster.address,
            method="Identify",
            tenants=tuple(tenants),
            duration_s=duration_s,
            timeout_s=timeout_s,
            subjects=self.args.subjects,
            k=10,
            pool=2048,
        )

    async def phase(
        self, tenants: list[TenantLoad], duration_s: float, timeout_s: float | None = None
    ) -> Phase:
        """Run one load phase and read the CPU time each process spent over it."""
        config = self.config(tenants, duration_s, timeout_s or self.args.deadline)
        if not self.requests:
            self.requests = build_requests(config)
        nodes0, client0 = self.nodes_cpu(), time.process_time()
        cpu0, t0 = cpu_seconds(self.gateway_pid), time.perf_counter()
        report = await generate(config, self.requests)
        cpu1, t1 = cpu_seconds(self.gateway_pid), time.perf_counter()
        nodes1, client1 = self.nodes_cpu(), time.process_time()
        return Phase(report, cpu1 - cpu0, nodes1 - nodes0, client1 - client0, t1 - t0)

    def nodes_cpu(self) -> float:
        """CPU seconds the nodes have spent so far, summed."""
        return sum(cpu_seconds(pid) for pid in self.node_pids)

    def rss(self) -> tuple[int, int]:
        """(gateway RSS, sum of the nodes' RSS) in bytes."""
        return rss_bytes(self.gateway_pid), sum(rss_bytes(p) for p in self.node_pids)


async def rehearse(args: argparse.Namespace, cluster: LocalCluster, keys: Keys) -> dict[str, Any]:
    """Steps 2 to 6 of the module docstring; the figures `render` reports."""
    r = Rehearsal(args, cluster, keys)
    out: dict[str, Any] = {}
    loader = TenantLoad("loader", keys.loader, 0.0, 8)

    log("warm-up: 5 s closed loop")
    await r.phase([loader], 5.0, timeout_s=10.0)

    capacity = 0.0
    out["capacity_runs"] = []
    for concurrency in args.capacity_concurrency:
        probe = TenantLoad("loader", keys.loader, 0.0, concurrency)
        ph = await r.phase([probe], args.capacity_s, timeout_s=10.0)
        t = ph.report.total
        out["capacity_runs"].append((concurrency, t.goodput_rps, t.ok_latency.p99_ms))
        log(
            f"  closed loop c={concurrency}: {t.goodput_rps:.1f} OK/s, "
            f"p99 {t.ok_latency.p99_ms:.1f} ms, cores {ph.cores()}"
        )
        if t.goodput_rps > capacity:
            capacity = t.goodput_rps
            out["capacity_phase"] = ph
    out["capacity"] = capacity
    log(f"capacity C = {capacity:.1f} Identify/s")

    write_tenants(
        Path(cluster.tenants_file or ""), keys, capacity, args.greedy_quota, args.greedy_priority
    )
    os.kill(r.gateway_pid, signal.SIGHUP)
    await asyncio.to_thread(wait_reloaded, cluster.address, keys.normals[NORMALS[0]])

    normal_rate = 0.1 * capacity

    def normals(concurrency: int = 64) -> list[TenantLoad]:
        return [TenantLoad(n, keys.normals[n], normal_rate, concurrency) for n in NORMALS]

    log(f"unloaded: 3 normal tenants at {normal_rate:.1f}/s each for {args.baseline_s:.0f} s")
    base = await r.phase(normals(), args.baseline_s)
    out["baseline"] = base
    for n in NORMALS:
        s = base.report.tenant(n)
        log(
            f"  {n}: ok {s.ok}/{s.sent}, p50 {s.ok_latency.p50_ms:.1f} ms, "
            f"p99 {s.ok_latency.p99_ms:.1f} ms"
        )

    log("gateway CPU: idle, then quota rejections, then calls without a key")
    cpu0 = cpu_seconds(r.gateway_pid)
    await asyncio.sleep(args.idle_s)
    idle_rate: float = (cpu_seconds(r.gateway_pid) - cpu0) / args.idle_s
    out["idle_cpu_rate"] = idle_rate
    reject_rate = 0.3 * capacity
    limited = await r.phase([TenantLoad("limited", keys.limited, reject_rate, 64)], args.cost_s)
    anonymous = await r.phase([TenantLoad("anonymous", None, reject_rate, 64)], args.cost_s)
    out["limited"] = limited
    out["anonymous"] = anonymous

    def per_call(ph: Phase, calls: int) -> float:
        return max(0.0, ph.gateway_cpu_s - idle_rate * ph.wall_s) / max(calls, 1)

    out["cpu_served"] = per_call(base, base.report.total.ok)
    out["cpu_served_nodes"] = base.nodes_cpu_s / max(base.report.total.ok, 1)
    out["cpu_quota_rejected"] = per_call(limited, limited.report.total.completed)
    out["cpu_unauthenticated"] = per_call(anonymous, anonymous.report.total.completed)

    greedy_rate = 1.2 * capacity
    log(
        f"overload: greedy {greedy_rate:.1f}/s (quota {args.greedy_quota * capacity:.1f}/s) "
        f"+ 3 x {normal_rate:.1f}/s for {args.overload_s:.0f} s"
    )
    rss_samples: list[tuple[float, int, int]] = []

    async def sample_rss() -> None:
        t0 = time.perf_counter()
        while True:
            rss_samples.append((time.perf_counter() - t0, *r.rss()))
            await asyncio.sleep(args.overload_s / 10)

    sampler = asyncio.create_task(sample_rss())
    tenants = [TenantLoad("greedy", keys.greedy, greedy_rate, args.greedy_concurrency), *normals()]
    over = await r.phase(tenants, args.overload_s)
    sampler.cancel()
    rss_samples.append((over.wall_s, *r.rss()))
    out["overload"] = over
    for summary in over.report.tenants:
        for count, message in summary.errors:
            log(f"  {summary.name}: [{count}] {message}")
    out["rss"] = rss_samples
    return out


def fmt_mib(n: float) -> str:
    """Bytes as whole MiB."""
    return f"{n / 2**20:.0f}"


def render(args: argparse.Namespace, res: dict[str, Any]) -> str:
    """The run as a markdown section: capacity, tenants and the targets."""
    max_streams = (
        GatewaySettings().overload_max_streams_per_connection
        if args.max_streams is None
        else args.max_streams
    )
    capacity: float = res["capacity"]
    base: Phase = res["baseline"]
    over: Phase = res["overload"]
    lines = [
        f"## Overload rehearsal (greedy tenant) — {now()}",
        "",
        (
            f"Machine: {machine()}. `python -m bench.overload` — gateway + 2 matcher nodes as "
            f"processes on 127.0.0.1, {args.subjects:,} demo subjects, Identify k=10, per-call "
            f"deadline {args.deadline:g} s; load from `tunggal_tools.load` (grpc.aio, open loop: "
            "latency from each call's due time) in a process on the same cores."
        ),
        "",
        "Capacity C (closed loop, one unlimited tenant): "
        + ", ".join(f"c={c}: {g:.1f}/s (p99 {p:.0f} ms)" for c, g, p in res["capacity_runs"])
        + f" → **C = {capacity:.1f} Identify/s**.",
        "",
        (
            f"Tenants: greedy ({args.greedy_priority} priority) asks 1.2 C = "
            f"{1.2 * capacity:.1f}/s with a "
            f"quota of {args.greedy_quota:g} C = {args.greedy_quota * capacity:.1f}/s; normal-1..3 "
            f"(normal priority) ask 0.1 C = {0.1 * capacity:.1f}/s each with a quota of 0.2 C. "
            f"Offered: 1.5 C for "
            f"{args.overload_s:.0f} s. Gateway: adaptive limiter defaults, streams per client "
            f"connection {max_streams or 'unlimited'}; each load tenant has its own "
            "connection."
        ),
        "",
        (
            "| tenant | unloaded ok % | unloaded p50 / p99 ms | overload ok % | overload p50 / "
            "p99 ms | p99 ratio | client lag p99 ms | codes under overload |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    rates = []
    for name in NORMALS:
        b = base.report.tenant(name)
        o = over.report.tenant(name)
        attempts = o.sent + o.unsent
        rate = o.ok / attempts if attempts else 1.0
        rates.append(rate)
        ratio = o.ok_latency.p99_ms / b.ok_latency.p99_ms if b.ok_latency.p99_ms else math.inf
        ratios.append(ratio)
        codes = ", ".join(f"{c} {n}" for c, n in o.codes.items())
        lines.append(
            f"| {name} | {100 * b.success_rate:.2f} | {b.ok_latency.p50_ms:.1f} / "
            f"{b.ok_latency.p99_ms:.1f} | {100 * rate:.3f} | {o.ok_latency.p50_ms:.1f} / "
            f"{o.ok_latency.p99_ms:.1f} | {ratio:.2f} | {o.client_lag.p99_ms:.1f} | {codes} |"
        )
    g = over.report.tenant("greedy")
    lines.append(
        f"| greedy | - | - | {100 * g.ok / max(g.sent + g.unsent, 1):.1f} | "
        f"{g.ok_latency.p50_ms:.1f} / {g.ok_latency.p99_ms:.1f} | - | "
        f"{g.client_lag.p99_ms:.1f} | " + ", ".join(f"{c} {n}" for c, n in g.codes.items()) + " |"
    )
    total = over.report.total
    goodput = total.goodput_rps
    rss = res["rss"]
    mid = rss[len(rss) // 2]
    cpu_served = res["cpu_served"]
    cpu_rej = res["cpu_quota_rejected"]
    cpu_anon = res["cpu_unauthenticated"]
    lim: Phase = res["limited"]
    anon: Phase = res["anonymous"]
    lag = max(s.client_lag.p99_ms for s in over.report.tenants)

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    min_rate = min(rates)
    max_ratio = max(ratios)
    gateway_growth = (rss[-1][1] - rss[0][1]) / rss[0][1]
    nodes_growth = (rss[-1][2] - rss[0][2]) / rss[0][2]
    cpu_cluster = cpu_served + res["cpu_served_nodes"]
    best: Phase = res["capacity_phase"]
    lines += [
        "",
        "| measure | value | target |",
        "|---|---|---|",
        (
            f"| in-quota tenants' success rate under overload (worst) | {100 * min_rate:.3f} % "
            f"| ≥ 99.9 %: {verdict(min_rate >= 0.999)} |"
        ),
        (
            f"| in-quota tenants' p99 overload / unloaded (worst) | {max_ratio:.2f}x "
            f"| ≤ 2x: {verdict(max_ratio <= 2.0)} |"
        ),
        (
            f"| goodput under overload (all tenants, OK/s) vs C | {goodput:.1f} / {capacity:.1f} = "
            f"{100 * goodput / capacity:.1f} % | ≥ 90 %: {verdict(goodput >= 0.9 * capacity)} |"
        ),
        (
            f"| offered / answered under overload (calls/s) | {total.target_rps:.1f} / "
            f"{total.rps:.1f} ({total.unsent} not sent; client lag p99 ≤ {lag:.1f} ms) | |"
        ),
        (
            f"| gateway RSS MiB start / middle / end | {fmt_mib(rss[0][1])} / {fmt_mib(mid[1])} / "
            f"{fmt_mib(rss[-1][1])} ({100 * gateway_growth:+.1f} %) "
            f"| flat (< 5 %): {verdict(gateway_growth < 0.05)} |"
        ),
        (
            f"| nodes' RSS MiB (sum) start / middle / end | {fmt_mib(rss[0][2])} / "
            f"{fmt_mib(mid[2])} / {fmt_mib(rss[-1][2])} ({100 * nodes_growth:+.1f} %) "
            f"| flat (< 5 %): {verdict(nodes_growth < 0.05)} |"
        ),
        f"| CPU cores used, gateway / nodes / load generator: at C | {best.cores()} | |",
        f"| ... under overload | {over.cores()} | |",
        (
            f"| CPU per served Identify: gateway / nodes (sum) | {1e6 * cpu_served:.0f} / "
            f"{1e6 * res['cpu_served_nodes']:.0f} µs | |"
        ),
        (
            f"| gateway CPU per quota-rejected Identify (RESOURCE_EXHAUSTED) | "
            f"{1e6 * cpu_rej:.0f} µs = {100 * cpu_rej / cpu_served:.1f} % of served | < 5 %: "
            f"{verdict(cpu_rej < 0.05 * cpu_served)} |"
        ),
        (
            f"| gateway CPU per call without a key (UNAUTHENTICATED) | {1e6 * cpu_anon:.0f} µs = "
            f"{100 * cpu_anon / cpu_served:.1f} % of served | |"
        ),
        (
            f"| quota rejection vs a served call's CPU on gateway + nodes | "
            f"{100 * cpu_rej / cpu_cluster:.1f} % | |"
        ),
        (
            f"| latency p50: served (unloaded) / quota-rejected / unauthenticated | "
            f"{base.report.total.ok_latency.p50_ms:.2f} / {lim.report.total.latency.p50_ms:.2f} / "
            f"{anon.report.total.latency.p50_ms:.2f} ms | |"
        ),
        f"| gateway idle CPU | {100 * res['idle_cpu_rate']:.2f} % of a core | |",
    ]
    quota_rejected = sum(s.codes.get("RESOURCE_EXHAUSTED", 0) for s in over.report.tenants)
    demand = (total.ok * cpu_served + quota_rejected * cpu_rej) / over.wall_s
    (before, after) = res["loadavg"]
    lines += [
        "",
        (
            f"Gateway CPU the overload asked for (OK x served cost + quota rejections x their "
            f"cost): {demand:.2f} cores; it got {over.gateway_cpu_s / over.wall_s:.2f}. "
            f"Load average (1 min) before / after the run: {before[0]:.1f} / {after[0]:.1f} "
            f"on {os.cpu_count()} cores (other jobs share the machine)."
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (module docstring) with the arguments `argv`."""
    p = command_line(__doc__)
    p.add_argument("--subjects", type=int, default=20_000, help="demo gallery size")
    p.add_argument("--port", type=int, default=48051, help="gateway port (nodes after it)")
    p.add_argument("--overload-s", type=float, default=60.0, help="overload phase length")
    p.add_argument("--baseline-s", type=float, default=20.0, help="unloaded phase length")
    p.add_argument("--capacity-s", type=float, default=10.0, help="each capacity run")
    p.add_argument("--capacity-concurrency", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--cost-s", type=float, default=15.0, help="each rejection-cost run")
    p.add_argument("--idle-s", type=float, default=5.0, help="idle CPU measurement")
    p.add_argument("--deadline", type=float, default=2.0, help="per-call deadline, seconds")
    p.add_argument(
        "--greedy-quota", type=float, default=0.7, help="greedy's Identify quota, fraction of C"
    )
    p.add_argument("--greedy-priority", choices=("critical", "normal", "batch"), default="normal")
    p.add_argument("--greedy-concurrency", type=int, default=512)
    p.add_argument(
        "--max-streams",
        type=int,
        help="gateway's TUNGGAL_GATEWAY_OVERLOAD_MAX_STREAMS_PER_CONNECTION "
        f"(default {GatewaySettings().overload_max_streams_per_connection}; 0: no limit)",
    )
    args = p.parse_args(argv)

    keys = Keys()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tunggal-overload-") as tmp:
        tenants_file = Path(tmp) / "tenants.toml"
        write_tenants(tenants_file, keys, None, args.greedy_quota)
        env = {}
        if args.max_streams is not None:
            env["TUNGGAL_GATEWAY_OVERLOAD_MAX_STREAMS_PER_CONNECTION"] = str(args.max_streams)
        cluster = LocalCluster(
            Path(tmp) / "cluster",
            base_port=args.port,
            nodes=2,
            tenants_file=tenants_file,
            env=env,
        )
        log(f"starting the cluster on {cluster.address}")
        cluster.start()
        try:
            with TunggalClient(cluster.address, timeout=120, metadata=bearer(keys.loader)) as c:
                log(f"enrolling {args.subjects:,} demo subjects")
                seed(c, args.subjects, DEMO_MODEL, quiet=True)
                settle(c)
            res = asyncio.run(rehearse(args, cluster, keys))
            res["loadavg"] = (load_before, os.getloadavg())
        finally:
            cluster.stop()
    text = render(args, res)
    publish(text, write=not args.no_write)


if __name__ == "__main__":
    main()
