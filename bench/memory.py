"""Matcher nodes' memory per template at rest and in service, against raw hnswlib.

    python -m bench.memory [--sizes 124000 248000 496000] [--rounds 4] [--round-s 20]

A node's memory at rest (just restarted from its snapshot) leaves out what
serving adds: the exact engine's score buffers and onnxruntime's arena, the
heap each server and search thread keeps, hnswlib's visited lists, and
calibration's buffers. For each gallery size N (structured FaceModel templates,
the data of bench.identify) this benchmark:

  1. starts a local cluster (gateway + 2 nodes, real processes on 127.0.0.1)
     with calibration off (a bulk load) and each node's initial capacity 5 %
     above its share, so the load never grows (copies) its slots; reads the
     empty nodes' RSS and enrolls N templates through the gateway (EnrollBatch
     of 1000, 2 clients);
  2. restarts it (snapshot load), calibration still off: nodes' RSS **at rest**;
     then --rounds rounds of the steady mix, reading the nodes' RSS after each:
     **steady (mix)** is the last reading;
  3. restarts it with the nodes' defaults: each node calibrates on its whole
     shard at start (no calibration is stored yet), as a node does after growth;
     once both have, --rounds rounds of the mix again: **steady (calibrated +
     mix)**, what a node that has calibrated in its life holds while serving;
  4. measures raw hnswlib over the same N in a child process of its own: the RSS
     its index adds once loaded (it is built once and kept under --cache) and
     after the same Identify probes from 16 threads.

The steady mix runs through the gateway for --round-s seconds a round, all of it
at once from `tunggal load`'s grpc.aio generator: Identify on HNSW (k=10, 16 in
flight), Identify exact=true (k=10, 32 in flight: the gateway's largest
SearchBatch), Verify of enrolled subjects (8 in flight) and Enroll (REPLACE) of
new subjects at 10/s. RSS comes from the operators' Stats (`rss_bytes`).

Then it fits RSS = fixed + per-template x N over the sizes, for each state and
for raw hnswlib, and says what the steady figures mean for 1M templates over 2
nodes and per 10M. The default sizes put 62k, 124k and 248k templates on a
node: after a restart a node holds the next power of two of slots above its
labels, and these fill 95 % of them, as 1M does on 2 nodes; each shard is at
least one 65,536-row block of the exact engine, so its score buffers are full
size. Results are printed and appended to the day's run file under
docs/benchmarks/ unless --no-write.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import numpy.typing as npt

from bench.reference import add_cache_option, cache_path, raw_hnsw, raw_index_file
from bench.report import command_line, log, machine, now, publish, rss_bytes
from tunggal.client import NodeInfo, TunggalClient, bearer
from tunggal.settings import NodeSettings
from tunggal.templates import encode_template
from tunggal.v1 import tunggal_pb2 as pb
from tunggal_tools.load import LoadConfig, Summary, TenantLoad, generate, identify_requests
from tunggal_tools.localcluster import LocalCluster, write_all_methods_tenants
from tunggal_tools.synthetic import FaceModel, subject_id

FloatMatrix = npt.NDArray[np.float32]

_K = 10
MiB = 2**20
GiB = 2**30
STRUCTURE = 0.7
"""FaceModel structure of the gallery: bench.identify's structured data set."""
HEADROOM = 1.05
"""Each node's initial capacity over its expected share of the gallery."""
CALIBRATED_SHARE = 0.9
"""A calibration counts once measured on at least this share of a node's gallery."""


@dataclass(frozen=True)
class MixShape:
    """What the steady mix keeps in flight (closed loops) and Enroll's rate."""

    identify: int = 16
    exact: int = 32
    verify: int = 8
    enroll_rps: float = 10.0


@dataclass(frozen=True)
class Reading:
    """The nodes' memory at one moment, summed over nodes."""

    templates: int
    capacity: int
    rss: int

    @classmethod
    def of(cls, stats: Sequence[NodeInfo]) -> Reading:
        """Sum one Stats answer's node rows (every node must have answered)."""
        down = [s.name for s in stats if s.error]
        if down:
            raise RuntimeError(f"nodes without Stats: {', '.join(down)}")
        return cls(
            sum(s.templates for s in stats),
            sum(s.capacity for s in stats),
            sum(s.rss_bytes for s in stats),
        )


@dataclass(frozen=True)
class RawMemory:
    """Raw hnswlib's RSS over one gallery, in its own process."""

    templates: int
    loaded: int
    """Bytes the index adds once loaded."""
    queried: int
    """...and after the Identify probes from 16 threads."""
    build_per_template: float
    """RSS delta of its build per template (when it was built)."""


@dataclass
class SizeRun:
    """Everything measured at one gallery size."""

    n: int
    empty: Reading
    enroll_rate: float
    rest: Reading
    mix: list[Reading]
    calibrated: Reading
    calibrated_mix: list[Reading]
    calibration: str
    raw: RawMemory
    gateway_rss: int
    calls: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Fit:
    """RSS = fixed + per_template x N, least squares over the sizes."""

    per_template: float
    fixed: float
    residual: float
    """Largest distance of a size's reading from the line, bytes."""

    @classmethod
    def of(cls, points: Sequence[tuple[int, int]]) -> Fit:
        """Fit (templates, bytes) points; two or more distinct sizes."""
        n = np.array([p[0] for p in points], dtype=np.float64)
        rss = np.array([p[1] for p in points], dtype=np.float64)
        if len(set(n.tolist())) < 2:
            raise ValueError("a fit needs two or more sizes")
        slope, intercept = np.polyfit(n, rss, 1)
        residual = float(np.abs(rss - (slope * n + intercept)).max())
        return cls(float(slope), float(intercept), residual)

    def at(self, n: float) -> float:
        """Bytes the line gives for `n` templates."""
        return self.fixed + self.per_template * n


# ---- the steady mix -----------------------------------------------------------------


def mix_requests(
    model: FaceModel, enrolled: int, probes: int = 1000, new_subjects: int = 2000, seed: int = 3
) -> dict[str, list[Any]]:
    """Requests of the steady mix over a gallery of subjects 0..enrolled-1 (capture 0):
    mated probes (capture 1) for Identify, exact and not, and Verify; Enroll
    (REPLACE) of subjects not enrolled yet."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(enrolled, size=min(probes, enrolled), replace=False)
    samples = model.samples(ids, 1)
    exact = [
        pb.IdentifyRequest(probe=pb.Probe(template=encode_template(p)), k=_K, exact=True)
        for p in samples
    ]
    verify = [
        pb.VerifyRequest(subject_id=subject_id(int(i)), probe=pb.Probe(template=encode_template(p)))
        for i, p in zip(ids, samples, strict=True)
    ]
    new_ids = range(enrolled, enrolled + new_subjects)
    enroll = [
        pb.EnrollRequest(
            subject_id=subject_id(i),
            templates=[encode_template(row)],
            mode=pb.ENROLL_MODE_REPLACE,
        )
        for i, row in zip(new_ids, model.samples(new_ids, 0), strict=True)
    ]
    return {
        "Identify": identify_requests(samples, _K),
        "Identify exact": exact,
        "Verify": verify,
        "Enroll": enroll,
    }


async def _mix_round(
    address: str, key: str, requests: dict[str, list[Any]], shape: MixShape, seconds: float
) -> dict[str, Summary]:
    loads = {
        "Identify": ("Identify", TenantLoad("identify", key, 0.0, shape.identify)),
        "Identify exact": ("Identify", TenantLoad("exact", key, 0.0, shape.exact)),
        "Verify": ("Verify", TenantLoad("verify", key, 0.0, shape.verify)),
        "Enroll": ("Enroll", TenantLoad("enroll", key, shape.enroll_rps, 2)),
    }
    runs = [
        generate(
            LoadConfig(
                address=address,
                method=method,
                tenants=(tenant,),
                duration_s=seconds,
                timeout_s=60.0,
            ),
            requests[name],
        )
        for name, (method, tenant) in loads.items()
    ]
    reports = await asyncio.gather(*runs)
    return {name: report.total for name, report in zip(loads, reports, strict=True)}


def steady_mix(
    client: TunggalClient,
    address: str,
    key: str,
    requests: dict[str, list[Any]],
    rounds: int,
    seconds: float,
    shape: MixShape = MixShape(),
) -> tuple[list[Reading], dict[str, str]]:
    """`rounds` rounds of the mix through the gateway at `address`; the nodes'
    memory after each, and per part of the mix its calls (ok of answered, and
    the other codes) over all rounds."""
    readings: list[Reading] = []
    totals: dict[str, list[Summary]] = {name: [] for name in requests}
    for r in range(rounds):
        summaries = asyncio.run(_mix_round(address, key, requests, shape, seconds))
        for name, summary in summaries.items():
            totals[name].append(summary)
        readings.append(Reading.of(client.stats()))
        log(
            f"  mix round {r + 1}: nodes {readings[-1].rss / MiB:,.0f} MiB; "
            + ", ".join(f"{name} {s.ok}/{s.completed}" for name, s in summaries.items())
        )
    calls = {}
    for name, rounds_of in totals.items():
        ok = sum(s.ok for s in rounds_of)
        completed = sum(s.completed for s in rounds_of)
        other: dict[str, int] = {}
        for s in rounds_of:
            for code, count in s.codes.items():
                if code != "OK":
                    other[code] = other.get(code, 0) + count
        extra = "".join(f", {code} {count}" for code, count in sorted(other.items()))
        calls[name] = f"{ok:,}/{completed:,} OK{extra}"
    return readings, calls


# ---- raw hnswlib in a process of its own ------------------------------------------------


def build_raw(gallery_file: Path, cache: Path) -> float:
    """Build raw hnswlib over the saved gallery into `cache` (child process);
    the RSS delta of the build per template."""
    gallery = np.load(gallery_file)
    _, _, per_template = raw_hnsw(gallery, STRUCTURE, cache, threads=2, log=log)
    return per_template


def measure_raw(
    index_file: Path, probes_file: Path, n: int, dim: int, ef: int, passes: int
) -> tuple[int, int]:
    """RSS raw hnswlib adds once its index is loaded, and after `passes` passes
    of the probes from 16 threads one query each (child process)."""
    probes = np.load(probes_file)
    gc.collect()
    rss0 = rss_bytes()
    index = hnswlib.Index(space="cosine", dim=dim)
    index.load_index(str(index_file), max_elements=n)
    loaded = rss_bytes() - rss0
    index.set_ef(ef)
    with ThreadPoolExecutor(16) as pool:
        for _ in range(passes):
            list(pool.map(lambda p: index.knn_query(p, k=_K, num_threads=1), probes))
    return loaded, rss_bytes() - rss0


def raw_memory(
    gallery: FloatMatrix, probes: FloatMatrix, cache: Path, work: Path, passes: int
) -> RawMemory:
    """Raw hnswlib's memory over `gallery`, each step in a fresh process, so
    neither this process's heap nor a build's leftovers count."""
    n, dim = gallery.shape
    index_file = raw_index_file(cache, STRUCTURE, n, dim)
    spawn = multiprocessing.get_context("spawn")
    probes_file = work / "probes.npy"
    np.save(probes_file, probes)
    if not (index_file.exists() and index_file.with_suffix(".json").exists()):
        gallery_file = work / "gallery.npy"
        np.save(gallery_file, gallery)
        log(f"raw hnswlib: building {n:,} templates into {cache}")
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            pool.submit(build_raw, gallery_file, cache).result()
        gallery_file.unlink()
    meta = json.loads(index_file.with_suffix(".json").read_text())
    build_per_template = float(meta["bytes_per_template"])
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        loaded, queried = pool.submit(
            measure_raw, index_file, probes_file, n, dim, NodeSettings().ef_search, passes
        ).result()
    return RawMemory(n, loaded, queried, build_per_template)


# ---- one size ---------------------------------------------------------------------------


def wait_calibrated(client: TunggalClient, timeout_s: float) -> list[NodeInfo]:
    """Stats once every node has a calibration measured on at least
    CALIBRATED_SHARE of its gallery."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = client.stats()
        if all(s.calibrated_templates >= CALIBRATED_SHARE * s.templates > 0 for s in stats):
            return stats
        if time.monotonic() > deadline:
            raise TimeoutError(f"nodes did not calibrate within {timeout_s:.0f} s")
        time.sleep(1.0)


def run_size(args: argparse.Namespace, n: int, work: Path) -> SizeRun:
    """Load, restart and load again one gallery of `n` templates (module docstring)."""
    model = FaceModel(dim=args.dim, structure=STRUCTURE)
    log(f"{n:,}: generating the gallery")
    gallery = np.concatenate(
        [model.samples(range(lo, min(n, lo + 100_000)), 0) for lo in range(0, n, 100_000)]
    )
    requests = mix_requests(model, n)
    key = secrets.token_urlsafe(24)
    data = work / f"cluster-{n}"
    tenants = write_all_methods_tenants(data / "tenants.toml", key)
    capacity = max(16, int(n / 2 * HEADROOM))
    bulk = {"TUNGGAL_NODE_CALIBRATE": "false", "TUNGGAL_NODE_INITIAL_CAPACITY": str(capacity)}

    def cluster(env: dict[str, str]) -> LocalCluster:
        return LocalCluster(
            data,
            base_port=args.port,
            nodes=2,
            dim=args.dim,
            env=env,
            tenants_file=tenants,
            start_timeout=1800,
        )

    with cluster(bulk) as c, TunggalClient(c.address, timeout=120, metadata=bearer(key)) as client:
        empty = Reading.of(client.stats())
        log(f"{n:,}: enrolling through the gateway (calibration off)")
        t0 = time.perf_counter()

        def enroll(lo: int) -> None:
            hi = min(n, lo + 1000)
            res = client.enroll_batch([subject_id(i) for i in range(lo, hi)], gallery[lo:hi])
            if not all(r.ok for r in res):
                raise RuntimeError(f"EnrollBatch at {lo}: {next(r for r in res if not r.ok)}")

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(enroll, range(0, n, 1000)))
        enroll_rate = n / (time.perf_counter() - t0)

    log(f"{n:,}: restarted (snapshot load, calibration off): at rest, then the mix")
    with cluster(bulk) as c, TunggalClient(c.address, timeout=120, metadata=bearer(key)) as client:
        rest = Reading.of(client.stats())
        mix, calls = steady_mix(client, c.address, key, requests, args.rounds, args.round_s)

    log(f"{n:,}: restarted with the nodes' defaults: calibration on the whole shard, the mix")
    defaults = {"TUNGGAL_NODE_INITIAL_CAPACITY": str(capacity)}
    with (
        cluster(defaults) as c,
        TunggalClient(c.address, timeout=120, metadata=bearer(key)) as client,
    ):
        t0 = time.perf_counter()
        stats = wait_calibrated(client, args.calibration_timeout)
        calibration = f"{time.perf_counter() - t0:.0f} s; " + ", ".join(
            f"{s.name}: ef {s.ef_search} on {s.calibrated_templates:,}" for s in stats
        )
        calibrated = Reading.of(stats)
        requests = mix_requests(model, n, seed=4)  # other probes; Enroll replaces again
        calibrated_mix, _ = steady_mix(client, c.address, key, requests, args.rounds, args.round_s)
        gateway_pid = c.gateway_spec.proc.pid if c.gateway_spec.proc is not None else None
        gateway_rss = rss_bytes(gateway_pid) if gateway_pid is not None else 0

    log(f"{n:,}: raw hnswlib")
    probes = model.samples(np.random.default_rng(3).choice(n, min(1000, n), replace=False), 1)
    raw = raw_memory(gallery, probes, args.cache, work, passes=args.rounds)
    return SizeRun(
        n=n,
        empty=empty,
        enroll_rate=enroll_rate,
        rest=rest,
        mix=mix,
        calibrated=calibrated,
        calibrated_mix=calibrated_mix,
        calibration=calibration,
        raw=raw,
        gateway_rss=gateway_rss,
        calls=calls,
    )


# ---- the report -------------------------------------------------------------------------

STATES: dict[str, Callable[[SizeRun], Reading]] = {
    "nodes at rest (restart, snapshot load)": lambda r: r.rest,
    "nodes steady (mix)": lambda r: r.mix[-1],
    "nodes steady (calibrated + mix)": lambda r: r.calibrated_mix[-1],
}
"""The node states fitted, by the reading that measures each."""
SIZING_STATE = "nodes steady (calibrated + mix)"
"""The state docs/operations.md sizes with: a node that has calibrated and serves."""


def _bytes_per_template(reading: Reading, empty: Reading) -> float:
    return (reading.rss - empty.rss) / reading.templates


def render(args: argparse.Namespace, runs: list[SizeRun]) -> str:
    """The run as a markdown section."""
    d = NodeSettings()
    mix = MixShape()
    lines = [
        f"## Node memory at rest and steady — {now()}",
        "",
        f"Machine: {machine()}. `python -m bench.memory --sizes "
        + " ".join(str(r.n) for r in runs)
        + f" --rounds {args.rounds} --round-s {args.round_s:g}` — gateway + 2 matcher nodes as "
        f"processes on 127.0.0.1, structured FaceModel templates (structure {STRUCTURE}), dim "
        f"{args.dim}, M={d.hnsw_m}, ef_construction={d.ef_construction}, exact matrix "
        f"{d.exact_dtype}, each node's initial capacity {HEADROOM:.2f}x its share. RSS from the "
        "operators' Stats, summed over the 2 nodes. Steady mix through the gateway per round "
        f"of {args.round_s:g} s, all at once: Identify k={_K} ({mix.identify} in flight), "
        f"Identify exact=true k={_K} ({mix.exact} in flight), Verify ({mix.verify}), Enroll "
        f"REPLACE of new subjects ({mix.enroll_rps:g}/s). Raw hnswlib: one index over the "
        "same gallery in a process of its own, "
        "loaded from its file, then queried with the same probes from 16 threads. Client, "
        "gateway and nodes share the same cores.",
        "",
        (
            "| N | templates / slots after the mix | empty nodes MiB | at rest MiB | steady "
            "(mix) MiB, by round | calibrated MiB | steady (calibrated + mix) MiB, by round | raw "
            "hnswlib loaded / queried MiB |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        last = r.calibrated_mix[-1]
        lines.append(
            f"| {r.n:,} | {last.templates:,} / {last.capacity:,} | {r.empty.rss / MiB:,.0f} | "
            f"{r.rest.rss / MiB:,.0f} | "
            + " / ".join(f"{m.rss / MiB:,.0f}" for m in r.mix)
            + f" | {r.calibrated.rss / MiB:,.0f} | "
            + " / ".join(f"{m.rss / MiB:,.0f}" for m in r.calibrated_mix)
            + f" | {r.raw.loaded / MiB:,.0f} / {r.raw.queried / MiB:,.0f} |"
        )
    lines += [
        "",
        (
            "Per template at each size, RSS above the empty nodes' over the templates held "
            "(the definition of bench.identify's 'at rest' row), against raw hnswlib's loaded "
            "index per template:"
        ),
        "",
        "| N | " + " | ".join(STATES) + " | raw hnswlib loaded / queried (build) |",
        "|---|" + "---|" * (len(STATES) + 1),
    ]
    for r in runs:
        raw = r.raw.loaded / r.raw.templates
        cells = [
            f"{_bytes_per_template(get(r), r.empty):,.0f} B "
            f"({_bytes_per_template(get(r), r.empty) / raw:.2f}x)"
            for get in STATES.values()
        ]
        lines.append(
            f"| {r.n:,} | "
            + " | ".join(cells)
            + f" | {raw:,.0f} / {r.raw.queried / r.raw.templates:,.0f} B "
            f"({r.raw.build_per_template:,.0f} B) |"
        )
    fits = {
        name: Fit.of([(get(r).templates, get(r).rss) for r in runs]) for name, get in STATES.items()
    }
    raw_fits = {
        "raw hnswlib loaded": Fit.of([(r.raw.templates, r.raw.loaded) for r in runs]),
        "raw hnswlib queried": Fit.of([(r.raw.templates, r.raw.queried) for r in runs]),
    }
    raw_slope = raw_fits["raw hnswlib loaded"].per_template
    lines += [
        "",
        (
            "RSS = fixed + per template x N, least squares over the sizes (2 nodes; raw "
            "hnswlib's fixed part is what its index adds at N = 0, about nothing). Largest "
            "distance of a size from the line: the fit's noise."
        ),
        "",
        (
            "| state | per template | vs raw hnswlib loaded | fixed, 2 nodes | off the line | "
            "1M over 2 nodes | each further 10M |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for name, fit in {**fits, **raw_fits}.items():
        bold = "**" if name == SIZING_STATE else ""
        lines.append(
            f"| {name} | {bold}{fit.per_template:,.0f} B{bold} | "
            f"{bold}{fit.per_template / raw_slope:.2f}x{bold} | {fit.fixed / MiB:,.0f} MiB | "
            f"{fit.residual / MiB:,.1f} MiB | {fit.at(1_000_000) / GiB:.2f} GiB | "
            f"{fit.per_template * 10_000_000 / GiB:.1f} GiB |"
        )
    sizing = fits[SIZING_STATE]
    lines += [
        "",
        (
            f"Sizing from '{SIZING_STATE}': {sizing.fixed / 2 / MiB:,.0f} MiB a node plus "
            f"{sizing.per_template:,.0f} B a template, so a node of 500,000 templates holds "
            f"{(sizing.fixed / 2 + sizing.per_template * 500_000) / GiB:.2f} GiB and 10M templates "
            f"take {sizing.per_template * 10_000_000 / GiB:.1f} GiB across the nodes plus "
            f"{sizing.fixed / 2 / MiB:,.0f} MiB per node."
        ),
        "",
        (
            "| N | enroll rate (EnrollBatch 1000, 2 clients, calibration off) | calibration at "
            "start (time; ef on templates) | gateway RSS | mix calls (calibration off) |"
        ),
        "|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.n:,} | {r.enroll_rate:,.0f}/s | {r.calibration} | "
            f"{r.gateway_rss / MiB:,.0f} MiB | "
            + "; ".join(f"{name} {text}" for name, text in r.calls.items())
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (module docstring) with the arguments `argv`."""
    p = command_line(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[124_000, 248_000, 496_000])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--rounds", type=int, default=4, help="rounds of the steady mix per phase")
    p.add_argument("--round-s", type=float, default=20.0, help="seconds per round of the mix")
    p.add_argument("--calibration-timeout", type=float, default=3600.0)
    p.add_argument("--port", type=int, default=47151)
    add_cache_option(p)
    args = p.parse_args(argv)
    if len(set(args.sizes)) < 2:
        p.error("give two or more sizes: the fit separates fixed and per-template memory")
    args.cache = cache_path(args.cache) or Path(tempfile.mkdtemp(prefix="tunggal-raw-"))
    with tempfile.TemporaryDirectory(prefix="tunggal-bench-memory-") as tmp:
        runs = [run_size(args, n, Path(tmp)) for n in sorted(set(args.sizes))]
    text = render(args, runs)
    publish(text, write=not args.no_write)


if __name__ == "__main__":
    main()
