"""Identify/verify/enroll through the gateway vs raw hnswlib and exact numpy.

    python -m bench.identify [--subjects 1000000] [--isotropic-subjects 200000]

For each data set (structured face-like templates, then the isotropic worst
case) it:
  1. builds a raw hnswlib index in this process (same M, ef_construction,
     the ef the nodes calibrated to) - the reference for speed and memory;
  2. finds every probe's true rank-1 with exact numpy search (the oracle);
  3. starts a local cluster (gateway + 2 nodes, real processes), enrolls the
     gallery through the gateway (EnrollBatch), and measures identify and
     verify latency/QPS at concurrency 1 and 16 (median of --runs runs),
     the rank-1 hit rate relative to exact, and memory per template.
Results are printed and appended to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import hnswlib
import numpy as np
import numpy.typing as npt

from bench.report import append, machine, now, rss_bytes
from tunggal.client import NodeInfo, TunggalClient, bearer
from tunggal.localcluster import LocalCluster, write_all_methods_tenants
from tunggal.settings import NodeSettings
from tunggal.synthetic import FaceModel, subject_id

FloatMatrix = npt.NDArray[np.float32]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Load:
    """Latency/throughput of one load pattern (medians over runs)."""

    qps: float
    p50_ms: float
    p99_ms: float


@dataclass
class Case:
    """All figures of one data set."""

    name: str
    subjects: int
    rows: dict[str, str] = field(default_factory=dict)


def run_load(call: Callable[[int], object], n: int, concurrency: int, runs: int) -> Load:
    """Run call(i) for i < n with `concurrency` threads, `runs` times; medians."""
    results: list[Load] = []
    for _ in range(runs):
        lat: list[float] = []
        lock = threading.Lock()

        def one(i: int, lat: list[float] = lat, lock: threading.Lock = lock) -> None:
            t0 = time.perf_counter()
            call(i)
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(n)))
        wall = time.perf_counter() - t0
        arr = np.array(lat) * 1000
        results.append(Load(n / wall, float(np.percentile(arr, 50)), float(np.percentile(arr, 99))))
    return Load(
        statistics.median(r.qps for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
    )


def exact_top1(gallery: FloatMatrix, probes: FloatMatrix) -> npt.NDArray[np.int64]:
    """Index of each probe's most similar gallery row, by exhaustive numpy search."""
    best = np.full(len(probes), -np.inf, dtype=np.float32)
    arg = np.zeros(len(probes), dtype=np.int64)
    for lo in range(0, len(gallery), 100_000):
        scores = probes @ gallery[lo : lo + 100_000].T
        blk = scores.argmax(axis=1)
        val = scores[np.arange(len(probes)), blk]
        better = val > best
        best[better], arg[better] = val[better], blk[better] + lo
    return arg


def settled_stats(client: TunggalClient, growth: float = 1.5) -> list[NodeInfo]:
    """Stats once every node has calibrated for (about) its current size."""
    while True:
        stats = client.stats()
        if all(s.templates < s.calibrated_templates * growth for s in stats):
            return stats
        time.sleep(1.0)


def raw_reference(
    args: argparse.Namespace,
    gallery: FloatMatrix,
    probes: FloatMatrix,
    probe_ids: npt.NDArray[np.int64],
    ef: int,
) -> tuple[int, dict[int, Load], float, float]:
    """Raw hnswlib with a node's parameters and ef: (rank-1 hits, loads, B/template, build s)."""
    d = NodeSettings()
    n = len(gallery)
    gc.collect()
    rss0 = rss_bytes()
    index = hnswlib.Index(space="cosine", dim=args.dim)
    index.init_index(n, ef_construction=d.ef_construction, M=d.hnsw_m)
    t0 = time.perf_counter()
    index.add_items(gallery, np.arange(n), num_threads=2)
    build = time.perf_counter() - t0
    raw_bytes = (rss_bytes() - rss0) / n
    index.set_ef(ef)
    top = np.array([index.knn_query(p, k=1, num_threads=1)[0][0, 0] for p in probes])
    loads = {
        c: run_load(
            lambda i: index.knn_query(probes[i], k=10, num_threads=1), len(probes), c, args.runs
        )
        for c in args.concurrency
    }
    return int((top == probe_ids).sum()), loads, raw_bytes, build


def run_case(args: argparse.Namespace, name: str, structure: float, n: int) -> Case:
    case = Case(name, n)
    model = FaceModel(dim=args.dim, structure=structure)
    log(f"{name}: generating {n:,} templates (dim {args.dim})")
    gallery = np.concatenate(
        [model.samples(range(lo, min(n, lo + 100_000)), 0) for lo in range(0, n, 100_000)]
    )
    rng = np.random.default_rng(1)
    probe_ids = rng.choice(n, size=args.queries, replace=False)
    probes = model.samples(probe_ids, 1)
    truth = exact_top1(gallery, probes)
    exact_hits = int((truth == probe_ids).sum())
    case.rows["exact numpy rank-1 mate hits"] = f"{exact_hits}/{len(probes)}"

    # ---- the cluster, through the gateway ------------------------------------
    with tempfile.TemporaryDirectory(prefix="tunggal-bench-") as tmp:
        key = secrets.token_urlsafe(24)  # the benchmark's own tenant: every method, no quota
        tenants = write_all_methods_tenants(Path(tmp) / "tenants.toml", key)
        cluster = LocalCluster(
            Path(tmp), base_port=args.port, nodes=2, dim=args.dim, tenants_file=tenants
        ).start()
        try:
            with TunggalClient(cluster.address, timeout=120, metadata=bearer(key)) as client:
                empty_rss = sum(s.rss_bytes for s in client.stats())
                log(f"{name}: enrolling {n:,} through the gateway")
                t0 = time.perf_counter()

                def enroll(lo: int) -> None:
                    ids = range(lo, min(n, lo + 1000))
                    res = client.enroll_batch(
                        [subject_id(i) for i in ids], gallery[lo : lo + 1000], mode="append"
                    )
                    assert all(r.ok for r in res), res[0]

                with ThreadPoolExecutor(2) as pool:
                    list(pool.map(enroll, range(0, n, 1000)))
                enroll_rate = n / (time.perf_counter() - t0)
                stats = settled_stats(client)
                node_rss = sum(s.rss_bytes for s in stats) - empty_rss
                index_bytes = sum(s.index_bytes for s in stats)
                matrix_bytes = sum(s.matrix_bytes for s in stats)
                got = [client.identify(p, k=10).candidates[0].subject_id for p in probes]
                hits = sum(g == subject_id(int(i)) for g, i in zip(got, probe_ids, strict=True))
                ident = {
                    c: run_load(
                        lambda i: client.identify(probes[i], k=10), len(probes), c, args.runs
                    )
                    for c in args.concurrency
                }
                ver = run_load(
                    lambda i: client.verify(subject_id(int(probe_ids[i])), probes[i]),
                    len(probes),
                    max(args.concurrency),
                    args.runs,
                )
        finally:
            cluster.stop()

    ef = max(s.ef_search for s in stats)
    case.rows["nodes' calibrated ef (measured hit rate vs exact)"] = ", ".join(
        f"{s.name}: {s.ef_search} ({s.calibration_hit_rate:.4f})" for s in stats
    )
    raw_hits, raw, raw_bytes, build = raw_reference(args, gallery, probes, probe_ids, ef)
    log(f"{name}: raw hnswlib built in {build:.0f} s, {raw_bytes:.0f} B/template")
    gc.collect()

    case.rows["HNSW (raw hnswlib) rank-1 mate hits"] = (
        f"{raw_hits}/{len(probes)} ({raw_hits / max(exact_hits, 1):.4f} of exact)"
    )
    case.rows["gateway identify rank-1 mate hits"] = (
        f"{hits}/{len(probes)} ({hits / max(exact_hits, 1):.4f} of exact)"
    )
    for c in args.concurrency:
        g, r = ident[c], raw[c]
        case.rows[f"identify c={c}: gateway QPS / raw hnswlib QPS"] = (
            f"{g.qps:,.0f} / {r.qps:,.0f} = {g.qps / r.qps:.2f}"
        )
        case.rows[f"identify c={c}: gateway p50 / p99 ms"] = f"{g.p50_ms:.2f} / {g.p99_ms:.2f}"
        case.rows[f"identify c={c}: raw hnswlib p50 / p99 ms"] = f"{r.p50_ms:.2f} / {r.p99_ms:.2f}"
    case.rows[f"verify c={max(args.concurrency)}: QPS, p50 / p99 ms"] = (
        f"{ver.qps:,.0f}, {ver.p50_ms:.2f} / {ver.p99_ms:.2f}"
    )
    case.rows["enroll rate through gateway (EnrollBatch 1000, 2 clients) / raw hnswlib build"] = (
        f"{enroll_rate:,.0f}/s / {n / build:,.0f}/s = {enroll_rate * build / n:.2f}"
    )
    node_index_side = (node_rss - matrix_bytes) / n
    case.rows["memory B/template: raw hnswlib (RSS delta)"] = f"{raw_bytes:.0f}"
    case.rows["memory B/template: nodes' RSS growth, all"] = (
        f"{node_rss / n:.0f} ({node_rss / n / raw_bytes:.2f}x hnswlib)"
    )
    case.rows["memory B/template: nodes without the exact matrix"] = (
        f"{node_index_side:.0f} ({node_index_side / raw_bytes:.2f}x hnswlib); "
        f"HNSW index {index_bytes / n:.0f}, exact matrix {matrix_bytes / n:.0f}"
    )
    for k, v in case.rows.items():
        log(f"  {k}: {v}")
    return case


def render(args: argparse.Namespace, cases: list[Case]) -> str:
    d = NodeSettings()
    lines = [
        f"## Identify through the gateway — {now()}",
        "",
        f"Machine: {machine()}. `python -m bench.identify` — 2 matcher nodes + gateway as "
        f"processes on 127.0.0.1, dim {args.dim}, M={d.hnsw_m}, ef_construction="
        f"{d.ef_construction}, ef self-calibrated per node (raw hnswlib uses the largest), "
        f"{args.queries} mated probes, medians "
        f"of {args.runs} runs. Client, gateway and nodes share the same cores.",
        "",
    ]
    for case in cases:
        lines += [
            f"### {case.name}, {case.subjects:,} subjects",
            "",
            "| measure | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v} |" for k, v in case.rows.items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--subjects", type=int, default=1_000_000)
    p.add_argument("--isotropic-subjects", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--port", type=int, default=47051)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    cases = [run_case(args, "structured (structure 0.7, rank 64)", 0.7, args.subjects)]
    if args.isotropic_subjects:
        cases.append(run_case(args, "isotropic worst case", 0.0, args.isotropic_subjects))
    text = render(args, cases)
    print(text)
    if not args.no_write:
        append(text)


if __name__ == "__main__":
    main()
