"""Where an Identify's CPU goes, for gateway/node settings side by side.

    python -m bench.cpu_breakdown [--subjects 100000] \\
        --variant "2 in flight:TUNGGAL_GATEWAY_SEARCH_BATCHES_IN_FLIGHT=2" \\
        --variant "1 in flight:TUNGGAL_GATEWAY_SEARCH_BATCHES_IN_FLIGHT=1"
    git worktree add /tmp/before HEAD~3
    python -m bench.cpu_breakdown --variant "before@/tmp/before:" --variant "now:"

Enrolls one structured gallery once (kept in --data-dir between runs), then
for each of --runs rounds starts the local cluster (gateway + 2 nodes, real
processes) once per variant, with that variant's environment, and runs
--queries mated Identify calls from --concurrency client threads. CPU is
read from /proc/<pid>/stat of every process (client included) around the
calls, so the figures are CPU per Identify, not wall time. The first variant
is the reference: every other one is reported as a ratio to it, taken
within a round (the variants take turns, so a drift of this shared machine
hits them alike), then the median of the rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.identify import settled_stats
from bench.report import command_line, cpu_seconds, log, machine, now, publish
from tunggal.client import TunggalClient, bearer
from tunggal_tools.localcluster import LocalCluster, write_all_methods_tenants
from tunggal_tools.synthetic import FaceModel, subject_id

_K = 10
KEY = "bench-cpu-breakdown-key"
DATA_DIR = Path(tempfile.gettempdir()) / "tunggal-bench-cpu"
"""Default --data-dir: the stored gallery, kept between runs (bench.sharding reads it too)."""
_PROCESSES = ("gateway", "node-0", "node-1", "client")


@dataclass(frozen=True)
class Variant:
    """A name, the environment its cluster starts with, and the checkout it runs
    (None: this one)."""

    name: str
    env: dict[str, str]
    checkout: Path | None = None

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``name[@checkout]:KEY=VALUE,KEY=VALUE`` (no variables: the defaults)."""
        head, _, assignments = text.partition(":")
        name, _, checkout = head.partition("@")
        env = dict(a.strip().split("=", 1) for a in assignments.split(",") if a.strip())
        return cls(name.strip(), env, Path(checkout.strip()) if checkout.strip() else None)


@dataclass(frozen=True)
class Round:
    """One variant's figures in one round."""

    qps: float
    p50_ms: float
    p99_ms: float
    hits: int
    cpu_us: dict[str, float]  # per Identify, by process

    @property
    def total_us(self) -> float:
        """CPU per Identify over every process."""
        return sum(self.cpu_us.values())


def cluster(
    args: argparse.Namespace, env: dict[str, str], checkout: Path | None = None
) -> LocalCluster:
    """The benchmark's cluster (not started) over the stored gallery."""
    data = Path(args.data_dir)
    tenants = write_all_methods_tenants(data / "tenants.toml", KEY)
    return LocalCluster(
        data,
        base_port=args.port,
        nodes=2,
        tenants_file=tenants,
        env=env,
        start_timeout=1800,
        code_dir=checkout,
    )


def seed(args: argparse.Namespace, model: FaceModel) -> None:
    """Enroll identities 0..subjects-1 unless the stored gallery has them."""
    with (
        cluster(args, {}) as cl,
        TunggalClient(cl.address, timeout=120, metadata=bearer(KEY)) as c,
    ):
        have = sum(s.templates for s in c.stats())
        if have >= args.subjects:
            log(f"reusing the stored gallery: {have:,} templates")
            return
        log(f"enrolling {args.subjects - have:,} subjects")
        for lo in range(have, args.subjects, 1000):
            ids = range(lo, min(args.subjects, lo + 1000))
            results = c.enroll_batch([subject_id(i) for i in ids], model.samples(ids, 0))
            assert all(r.ok for r in results), results[0]
        settled_stats(c)  # the nodes calibrate for their size before anything is measured


def measure(
    args: argparse.Namespace, variant: Variant, probes: np.ndarray, truth: list[str]
) -> Round:
    """Start the variant's cluster, warm it up, run the Identify load, stop it."""
    cl = cluster(args, variant.env, variant.checkout).start()
    try:
        with TunggalClient(cl.address, timeout=60, metadata=bearer(KEY)) as client:
            for probe in probes[:200]:  # warm-up: channels, batchers, caches
                client.identify(probe, k=_K)
            pids = {
                spec.name: spec.proc.pid for spec in (cl.gateway_spec, *cl.node_specs) if spec.proc
            }
            pids["client"] = os.getpid()
            latencies: list[float] = []
            lock = threading.Lock()

            def one(i: int) -> bool:
                t0 = time.perf_counter()
                answer = client.identify(probes[i], k=_K)
                with lock:
                    latencies.append(time.perf_counter() - t0)
                return bool(answer.candidates) and answer.candidates[0].subject_id == truth[i]

            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                hits = sum(pool.map(one, range(len(probes))))
            wall = time.perf_counter() - t0
            after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    finally:
        cl.stop()
    ms = np.array(latencies) * 1000
    return Round(
        qps=len(probes) / wall,
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
        hits=hits,
        cpu_us={n: (after[n] - before[n]) / len(probes) * 1e6 for n in pids},
    )


def checkout_commit(checkout: Path) -> str:
    """`git describe`-like name of a checkout's HEAD (its short hash)."""
    git = shutil.which("git")
    if git is None:
        return str(checkout)
    try:
        out = subprocess.run(
            [git, "-C", str(checkout), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return str(checkout)
    return f"commit {out.stdout.strip()}"


def render(
    args: argparse.Namespace, variants: list[Variant], rounds: dict[str, list[Round]]
) -> str:
    """The run as a markdown section: one row per variant, medians over the rounds."""
    ref = variants[0].name
    lines = [
        f"## Where an Identify's CPU goes — {now()}",
        "",
        (
            f"Machine: {machine()}. `python -m bench.cpu_breakdown` — gateway + 2 matcher nodes "
            f"as processes on 127.0.0.1, {args.subjects:,} structured subjects (structure 0.7, "
            f"dim 128), Identify k={_K}, {args.queries} mated probes from {args.concurrency} "
            f"client threads (sync `TunggalClient`, in this process, counted as 'client'); CPU "
            f"from /proc/<pid>/stat around the calls; medians of {args.runs} rounds in which the "
            f"variants take turns; ratios to **{ref}** are taken within a round, then the median."
        ),
        "",
        "| variant | environment | QPS | p50 / p99 ms | rank-1 hits | CPU µs per Identify: "
        + " / ".join(_PROCESSES)
        + " | total | QPS vs ref | CPU vs ref |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        rs = rounds[v.name]
        med = {p: statistics.median(r.cpu_us.get(p, 0.0) for r in rs) for p in _PROCESSES}
        qps_ratio = statistics.median(a.qps / b.qps for a, b in zip(rs, rounds[ref], strict=True))
        cpu_ratio = statistics.median(
            a.total_us / b.total_us for a, b in zip(rs, rounds[ref], strict=True)
        )
        env = ", ".join(f"`{k}={val}`" for k, val in v.env.items()) or "defaults"
        if v.checkout is not None:
            env += f"; code of {checkout_commit(v.checkout)}"
        lines.append(
            f"| {v.name} | {env} | {statistics.median(r.qps for r in rs):,.0f} | "
            f"{statistics.median(r.p50_ms for r in rs):.2f} / "
            f"{statistics.median(r.p99_ms for r in rs):.2f} | "
            f"{min(r.hits for r in rs)}/{args.queries} | "
            + " / ".join(f"{med[p]:,.0f}" for p in _PROCESSES)
            + f" | {statistics.median(r.total_us for r in rs):,.0f} | {qps_ratio:.2f}x | "
            f"{cpu_ratio:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (module docstring) with the arguments `argv`."""
    p = command_line(__doc__)
    p.add_argument("--subjects", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--port", type=int, default=48051)
    p.add_argument(
        "--variant",
        action="append",
        type=Variant.parse,
        help="name[@checkout]:KEY=VALUE,... (repeatable; the first is the reference; default: "
        "the defaults); @checkout runs that checkout's code (e.g. a git worktree of an older "
        "commit) over the same stored gallery",
    )
    p.add_argument("--data-dir", default=str(DATA_DIR), help="the stored gallery")
    args = p.parse_args(argv)
    variants: list[Variant] = args.variant or [Variant("defaults", {})]
    model = FaceModel(dim=128, structure=0.7)
    seed(args, model)
    rng = np.random.default_rng(1)
    ids = rng.choice(args.subjects, size=args.queries, replace=False)
    probes = model.samples(ids, 1)
    truth = [subject_id(int(i)) for i in ids]
    rounds: dict[str, list[Round]] = {v.name: [] for v in variants}
    for r in range(args.runs):
        for v in variants:
            got = measure(args, v, probes, truth)
            rounds[v.name].append(got)
            log(f"round {r + 1} {v.name}: {got.qps:,.0f} QPS, {got.total_us:,.0f} µs CPU/Identify")
    text = render(args, variants, rounds)
    publish(text, write=not args.no_write)


if __name__ == "__main__":
    main()
