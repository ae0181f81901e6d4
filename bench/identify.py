"""Identify/verify/enroll through the gateway vs raw hnswlib and exact numpy.

    python -m bench.identify [--subjects 1000000] [--isotropic-subjects 200000]

For each data set (structured face-like templates, then the isotropic worst
case) it:
  1. finds every probe's true rank-1 with exact numpy search (the oracle);
  2. starts a local cluster (gateway + 2 nodes, real processes), enrolls the
     gallery through the gateway (EnrollBatch), waits for the nodes to
     calibrate, and measures identify and verify latency/QPS at concurrency
     1 and 16 (median of --runs runs) and the rank-1 hit rate vs exact;
  3. restarts the cluster (snapshot load) and reads the nodes' memory at rest,
     then after --mix-rounds rounds of bench.memory's steady mix (Identify on
     HNSW and exact=true, Verify, Enroll) through the gateway: steady;
  4. builds (or loads from --cache) raw hnswlib over the whole gallery in this
     process with the nodes' M and ef_construction, and runs the same queries
     from as many client threads as the gateway has calls in flight, at the
     nodes' ef and at the ef the nodes' calibration picks for the single
     index (equal accuracy), taking turns with the gateway within each of
     --runs rounds (the cluster stays up and idle meanwhile); gateway/raw QPS
     is the median of the rounds' ratios. The gateway's load comes from
     `tunggal load`'s grpc.aio generator (one event loop, the way ghz loads
     a server), and again from the sync `TunggalClient` in threads, whose
     client CPU shares these 2 cores with the gateway and the nodes.
Results are printed and appended to the day's run file under docs/benchmarks/.
"""

from __future__ import annotations

import argparse
import asyncio
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

from bench.memory import mix_requests, steady_mix
from bench.reference import (
    add_cache_option,
    cache_path,
    calibrated_ef,
    exact_topk,
    raw_hnsw,
    recall_at,
)
from bench.report import command_line, log, machine, now, publish
from tunggal.client import NodeInfo, TunggalClient, bearer
from tunggal.settings import NodeSettings
from tunggal.v1 import tunggal_pb2 as pb
from tunggal_tools.load import LoadConfig, TenantLoad, generate, identify_requests
from tunggal_tools.localcluster import LocalCluster, write_all_methods_tenants
from tunggal_tools.synthetic import FaceModel, identity_of, subject_id

FloatMatrix = npt.NDArray[np.float32]

_K = 10  # Identify k, and the k of recall@k
GATEWAY = "gateway"
"""Identify load from `tunggal load`'s grpc.aio generator (`aio_identify_load`)."""
SYNC_GATEWAY = "gateway (sync client threads)"
"""The same load from the sync `TunggalClient`, one thread per call in flight."""


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


def aio_identify_load(
    address: str, key: str, requests: list[pb.IdentifyRequest], concurrency: int
) -> Load:
    """Each Identify request once through the gateway, from `tunggal load`'s
    grpc.aio generator (closed loop, `concurrency` calls in flight, one event
    loop in this process): the load a ghz-like tool offers, at a fraction of
    the client CPU of `concurrency` threads on the sync client, which shares
    these cores with the gateway and the nodes."""
    config = LoadConfig(
        address=address,
        method="Identify",
        tenants=(TenantLoad("bench", key, 0.0, concurrency),),
        total=len(requests),
        timeout_s=120.0,
    )
    total = asyncio.run(generate(config, requests)).total
    if total.ok != len(requests):
        raise RuntimeError(f"{total.ok} of {len(requests)} Identify calls succeeded: {total.codes}")
    return Load(total.rps, total.latency.p50_ms, total.latency.p99_ms)


def settled_stats(client: TunggalClient, growth: float = 1.5) -> list[NodeInfo]:
    """Stats once every node has calibrated for (about) its current size."""
    while True:
        stats = client.stats()
        if all(s.templates < s.calibrated_templates * growth for s in stats):
            return stats
        time.sleep(1.0)


def median_load(loads: list[Load]) -> Load:
    """Per-figure medians of several runs."""
    return Load(
        statistics.median(r.qps for r in loads),
        statistics.median(r.p50_ms for r in loads),
        statistics.median(r.p99_ms for r in loads),
    )


def raw_topk(index: hnswlib.Index, probes: FloatMatrix, ef: int) -> npt.NDArray[np.int64]:
    """Top-_K labels of raw hnswlib at `ef`, best first."""
    index.set_ef(ef)
    labels, _ = index.knn_query(probes, k=_K, num_threads=2)
    return np.asarray(labels, dtype=np.int64)


def gateway_topk(client: TunggalClient, probes: FloatMatrix) -> npt.NDArray[np.int64]:
    """Top-_K gallery rows (identity numbers) through the gateway; -1 pads short answers."""
    out = np.full((len(probes), _K), -1, dtype=np.int64)
    for row, probe in enumerate(probes):
        for col, cand in enumerate(client.identify(probe, k=_K).candidates):
            out[row, col] = identity_of(cand.subject_id)
    return out


Runner = Callable[[int], Load]
"""Runs one target's load at a concurrency and measures it."""


def threaded(
    call: Callable[[int], object], n: int, prepare: Callable[[], None] | None = None
) -> Runner:
    """A runner of call(i) for i < n from `concurrency` threads, after prepare()
    if given (e.g. setting hnswlib's ef)."""

    def run(concurrency: int) -> Load:
        if prepare is not None:
            prepare()
        return run_load(call, n, concurrency, 1)

    return run


def interleaved_loads(
    args: argparse.Namespace, targets: dict[str, Runner]
) -> dict[str, dict[int, list[Load]]]:
    """Each target's load at each concurrency, --runs rounds, the targets
    taking turns within a round (so a drift of this shared machine's load hits
    all of them alike and ratios are taken within a round)."""
    out: dict[str, dict[int, list[Load]]] = {name: {} for name in targets}
    for r in range(args.runs):
        for c in args.concurrency:
            for name, runner in targets.items():
                out[name].setdefault(c, []).append(runner(c))
                log(f"  round {r + 1} c={c} {name}: {out[name][c][-1].qps:,.0f} QPS")
    return out


def run_case(args: argparse.Namespace, name: str, structure: float, n: int) -> Case:
    """Measure one data set of `n` subjects at FaceModel `structure` (module docstring)."""
    case = Case(name, n)
    model = FaceModel(dim=args.dim, structure=structure)
    log(f"{name}: generating {n:,} templates (dim {args.dim})")
    gallery = np.concatenate(
        [model.samples(range(lo, min(n, lo + 100_000)), 0) for lo in range(0, n, 100_000)]
    )
    rng = np.random.default_rng(1)
    probe_ids = rng.choice(n, size=args.queries, replace=False)
    probes = model.samples(probe_ids, 1)
    truth_k = exact_topk(gallery, probes, _K)
    truth = truth_k[:, 0]
    exact_hits = int((truth == probe_ids).sum())
    case.rows["exact numpy rank-1 mate hits"] = f"{exact_hits}/{len(probes)}"

    # ---- the cluster, through the gateway ------------------------------------
    with tempfile.TemporaryDirectory(prefix="tunggal-bench-") as tmp:
        key = secrets.token_urlsafe(24)  # the benchmark's own tenant: every method, no quota
        tenants = write_all_methods_tenants(Path(tmp) / "tenants.toml", key)

        def cluster_up() -> LocalCluster:
            return LocalCluster(
                Path(tmp),
                base_port=args.port,
                nodes=2,
                dim=args.dim,
                tenants_file=tenants,
                start_timeout=1800,
            ).start()

        cluster = cluster_up()
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
                gateway_k = gateway_topk(client, probes)
                hits = int((gateway_k[:, 0] == probe_ids).sum())
                node_ef = max(s.ef_search for s in stats)
                index, build, raw_bytes = raw_hnsw(
                    gallery, structure, cache_path(args.cache), threads=2, log=log
                )
                log(f"{name}: raw hnswlib built in {build:.0f} s, {raw_bytes:.0f} B/template")
                calibration = calibrated_ef(index, gallery, threads=2)
                raw_efs = {f"raw hnswlib at the nodes' ef {node_ef}": node_ef}
                if calibration.ef != node_ef:
                    raw_efs[f"raw hnswlib at its calibrated ef {calibration.ef}"] = calibration.ef
                tops = {ref: raw_topk(index, probes, ef) for ref, ef in raw_efs.items()}

                def raw_target(ix: hnswlib.Index, ef: int) -> Runner:
                    return threaded(
                        lambda i: ix.knn_query(probes[i], k=_K, num_threads=1),
                        len(probes),
                        prepare=lambda: ix.set_ef(ef),
                    )

                log(f"{name}: identify load, gateway and raw hnswlib taking turns")
                requests = identify_requests(probes, _K)
                targets: dict[str, Runner] = {
                    GATEWAY: lambda c: aio_identify_load(cluster.address, key, requests, c),
                    SYNC_GATEWAY: threaded(lambda i: client.identify(probes[i], k=_K), len(probes)),
                    **{ref: raw_target(index, ef) for ref, ef in raw_efs.items()},
                }
                loads = interleaved_loads(args, targets)
                del index, targets
                gc.collect()
                log(f"{name}: verify load")
                ver = run_load(
                    lambda i: client.verify(subject_id(int(probe_ids[i])), probes[i]),
                    len(probes),
                    max(args.concurrency),
                    args.runs,
                )
        finally:
            cluster.stop()
        # Memory at rest: restart (snapshot load), so calibration's and
        # enrollment's transient buffers are not counted.
        log(f"{name}: restarting the cluster to measure memory at rest")
        t0 = time.perf_counter()
        cluster = cluster_up()
        restart_s = time.perf_counter() - t0
        try:
            with TunggalClient(cluster.address, timeout=120, metadata=bearer(key)) as client:
                rest = client.stats()
                if args.mix_rounds:
                    log(f"{name}: the steady mix, then memory again")
                    mix, mix_calls = steady_mix(
                        client,
                        cluster.address,
                        key,
                        mix_requests(model, n),
                        args.mix_rounds,
                        args.mix_s,
                    )
        finally:
            cluster.stop()
    node_rss = sum(s.rss_bytes for s in rest) - empty_rss
    index_bytes = sum(s.index_bytes for s in rest)
    # The matrix is allocated for its capacity, but only rows in use are resident.
    matrix_bytes = sum(s.matrix_bytes / max(s.capacity, 1) * s.templates for s in rest)

    case.rows["nodes' calibrated ef (measured hit rate vs exact)"] = ", ".join(
        f"{s.name}: {s.ef_search} ({s.calibration_hit_rate:.4f})" for s in stats
    )
    case.rows["raw hnswlib calibrated the nodes' way, whole gallery: ef (hit rate)"] = (
        f"{calibration.ef} ({calibration.hit_rate:.4f})"
    )
    case.rows["gateway identify rank-1 mate hits"] = (
        f"{hits}/{len(probes)} ({hits / max(exact_hits, 1):.4f} of exact)"
    )
    for ref, top in tops.items():
        raw_hits = int((top[:, 0] == probe_ids).sum())
        case.rows[f"{ref}: rank-1 mate hits"] = (
            f"{raw_hits}/{len(probes)} ({raw_hits / max(exact_hits, 1):.4f} of exact)"
        )
    case.rows[f"recall@{_K} vs exact numpy top-{_K}: gateway"] = (
        f"{recall_at(gateway_k, truth_k):.4f}"
    )
    for ref, top in tops.items():
        case.rows[f"recall@{_K} vs exact numpy top-{_K}: {ref}"] = f"{recall_at(top, truth_k):.4f}"
    for c in args.concurrency:
        for via in (GATEWAY, SYNC_GATEWAY):
            g = median_load(loads[via][c])
            case.rows[f"identify c={c}: {via} QPS, p50 / p99 ms"] = (
                f"{g.qps:,.0f}, {g.p50_ms:.2f} / {g.p99_ms:.2f}"
            )
        for ref in raw_efs:
            raw = loads[ref][c]
            r = median_load(raw)
            cells = []
            for via in (GATEWAY, SYNC_GATEWAY):
                ratios = sorted(a.qps / b.qps for a, b in zip(loads[via][c], raw, strict=True))
                cells.append(
                    f"{via}/raw **{statistics.median(ratios):.2f}** (rounds: "
                    + ", ".join(f"{x:.2f}" for x in ratios)
                    + ")"
                )
            case.rows[f"identify c={c}: {ref}: QPS, p50 / p99 ms; gateway/raw QPS"] = (
                f"{r.qps:,.0f}, {r.p50_ms:.2f} / {r.p99_ms:.2f}; " + "; ".join(cells)
            )
    case.rows[f"verify c={max(args.concurrency)}: QPS, p50 / p99 ms"] = (
        f"{ver.qps:,.0f}, {ver.p50_ms:.2f} / {ver.p99_ms:.2f}"
    )
    case.rows["enroll rate through gateway (EnrollBatch 1000, 2 clients) / raw hnswlib build"] = (
        f"{enroll_rate:,.0f}/s / {n / build:,.0f}/s = {enroll_rate * build / n:.2f}"
    )
    case.rows["cluster restart (snapshot load) s"] = f"{restart_s:.1f}"
    node_index_side = (node_rss - matrix_bytes) / n
    case.rows["memory B/template: raw hnswlib (RSS delta of the build)"] = f"{raw_bytes:.0f}"
    case.rows["memory B/template: nodes at rest (RSS after restart less empty nodes')"] = (
        f"{node_rss / n:.0f} (**{node_rss / n / raw_bytes:.2f}x** hnswlib)"
    )
    case.rows["memory B/template: nodes at rest without the exact matrix"] = (
        f"{node_index_side:.0f} (**{node_index_side / raw_bytes:.2f}x** hnswlib); "
        f"HNSW index file {index_bytes / n:.0f}, exact matrix rows {matrix_bytes / n:.0f}"
    )
    if args.mix_rounds:
        steady = (mix[-1].rss - empty_rss) / mix[-1].templates
        case.rows[
            f"memory B/template: nodes steady (RSS after {args.mix_rounds} x {args.mix_s:g} s of "
            "bench.memory's mix with exact Identify, less empty nodes')"
        ] = f"{steady:.0f} (**{steady / raw_bytes:.2f}x** hnswlib); by round: " + ", ".join(
            f"{(m.rss - empty_rss) / m.templates:.0f}" for m in mix
        )
        case.rows["steady mix calls"] = "; ".join(f"{k} {v}" for k, v in mix_calls.items())
    for k, v in case.rows.items():
        log(f"  {k}: {v}")
    return case


def render(args: argparse.Namespace, cases: list[Case]) -> str:
    """The run as a markdown section: one table per data set."""
    d = NodeSettings()
    lines = [
        f"## Identify through the gateway — {now()}",
        "",
        (
            f"Machine: {machine()}. `python -m bench.identify` — 2 matcher nodes + gateway as "
            f"processes on 127.0.0.1, dim {args.dim}, M={d.hnsw_m}, ef_construction="
            f"{d.ef_construction}, ef self-calibrated per node; raw hnswlib (one index over the "
            "whole gallery, one process, the same client threads) at the nodes' largest ef and "
            "at the ef the same calibration picks for it (equal accuracy), "
            f"{args.queries} mated probes, medians "
            f"of {args.runs} rounds in which gateway and raw hnswlib take turns (ratios are "
            "taken within a round, then the median). Client, gateway and nodes share the same "
            "cores; exact matrix storage "
            f"{d.exact_dtype}."
        ),
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
    """Run the benchmark (module docstring) with the arguments `argv`."""
    p = command_line(__doc__)
    p.add_argument("--subjects", type=int, default=1_000_000)
    p.add_argument("--isotropic-subjects", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--port", type=int, default=47051)
    p.add_argument(
        "--mix-rounds", type=int, default=3, help="rounds of the steady mix after the restart"
    )
    p.add_argument("--mix-s", type=float, default=20.0, help="seconds per round of the mix")
    add_cache_option(p)
    args = p.parse_args(argv)
    cases = [run_case(args, "structured (structure 0.7, rank 64)", 0.7, args.subjects)]
    if args.isotropic_subjects:
        cases.append(run_case(args, "isotropic worst case", 0.0, args.isotropic_subjects))
    text = render(args, cases)
    publish(text, write=not args.no_write)


if __name__ == "__main__":
    main()
