"""Exact search on onnxruntime vs numpy vs hnswlib, on synthetic faces.

    .venv/bin/python -m bench.exact                        # 100k, dims 128 and 512
    .venv/bin/python -m bench.exact --sizes 1000000 --hnsw-sizes 0

For each gallery size, dimension and data structure (FaceModel structure 0.0 =
isotropic, 0.7 = low-rank like real embedders) it reports probes/s at batch
sizes 1 and 256 for:

* the ExactMatrix engine (onnxruntime, float32 and float16 storage),
* numpy matmul + argpartition, blocked like the engine (the previous
  ExactMatrix.search), and the engine's speed-up over it,
* hnswlib (a node's M and ef_construction) at each --efs and at the ef a node's
  self-calibration picks for that index, with its rank-1 mate hit
  rate (probes are capture 1 of enrolled identities) next to exact's, and how
  often its top-1 equals exact's top-1;

and the bytes the matrix adds (float32 vs float16). Every timing is the median
of --repeats runs. Results are appended to the day's run file under
docs/benchmarks/ as a dated section unless --no-write.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import hnswlib
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from bench.reference import add_cache_option, cache_path, calibrated_ef, raw_hnsw
from bench.report import append, command_line, now
from bench.report import machine as machine_line
from matcher.exact import ExactMatrix, FloatMatrix, Labels, numpy_topk
from matcher.onnx_topk import resolve_providers
from tunggal.settings import NodeSettings
from tunggal_tools.synthetic import FaceModel

_GEN_CHUNK = 65_536
_NUMPY_BLOCK = 65_536


def numpy_search(
    gallery: FloatMatrix, alive: npt.NDArray[np.bool_], probes: FloatMatrix, k: int
) -> tuple[Labels, FloatMatrix]:
    """numpy matmul + argpartition per block, merged: the pre-onnxruntime search
    (without its copy of each block, since numpy_topk no longer casts a copy)."""
    n = gallery.shape[0]
    best_labels = np.full((probes.shape[0], k), -1, dtype=np.int64)
    best_scores = np.full((probes.shape[0], k), -np.inf, dtype=np.float32)
    for start in range(0, n, _NUMPY_BLOCK):
        stop = min(start + _NUMPY_BLOCK, n)
        labels, scores = numpy_topk(gallery[start:stop], alive[start:stop], probes, k)
        labels = np.where(labels >= 0, labels + start, -1)
        merged_labels = np.concatenate([best_labels, labels], axis=1)
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        order = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
        best_labels = np.take_along_axis(merged_labels, order, axis=1)
        best_scores = np.take_along_axis(merged_scores, order, axis=1)
    return best_labels, best_scores


Search = Callable[[FloatMatrix], object]


def timed(search: Search, probes: FloatMatrix, batch: int, singles: int) -> float:
    """Probes/s of one run of `search` at `batch` probes per call.

    A batch-1 run is `singles` back-to-back one-probe calls.
    """
    if batch == 1:
        rows = [probes[i : i + 1] for i in range(min(singles, len(probes)))]
        t0 = time.perf_counter()
        for row in rows:
            search(row)
        return len(rows) / (time.perf_counter() - t0)
    chunk = probes[:batch]
    t0 = time.perf_counter()
    search(chunk)
    return len(chunk) / (time.perf_counter() - t0)


def median_rates(
    engines: dict[str, Search], probes: FloatMatrix, batch: int, singles: int, repeats: int
) -> dict[str, float]:
    """Median probes/s per engine; runs interleave engines so load drifts hit all alike."""
    for search in engines.values():
        search(probes[:batch])  # warm-up: sessions, device blocks, caches
    runs: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, search in engines.items():
            runs[name].append(timed(search, probes, batch, singles))
    return {name: statistics.median(r) for name, r in runs.items()}


@dataclass
class Case:
    """One gallery size, dimension and structure: its rates, bytes and hit rates."""

    size: int
    dim: int
    structure: float
    build_s: float = 0.0
    rates: dict[str, dict[int, float]] = field(default_factory=dict)  # engine -> batch -> p/s
    nbytes: dict[str, int] = field(default_factory=dict)
    exact_hit: float = 0.0
    hnsw: list[tuple[int, dict[int, float], float, float]] = field(default_factory=list)
    hnsw_build_s: float | None = None
    calibrated_ef: int | None = None  # what a node's calibration picks for this index
    calibration_met: bool = True  # False: even the grid's largest ef missed the target
    calibration_hit_rate: float = 0.0  # on the calibration's own probes


def generate(
    model: FaceModel, size: int, capture: int, ids: npt.NDArray[np.int64] | None = None
) -> FloatMatrix:
    """FaceModel samples in chunks (whole-array generation is float64 and huge at 1M)."""
    idx = np.arange(size, dtype=np.int64) if ids is None else ids
    out = np.empty((len(idx), model.dim), dtype=np.float32)
    for start in range(0, len(idx), _GEN_CHUNK):
        out[start : start + _GEN_CHUNK] = model.samples(idx[start : start + _GEN_CHUNK], capture)
    return out


def run_case(args: argparse.Namespace, size: int, dim: int, structure: float) -> Case:
    """Generate one gallery, time every engine on it and check hnswlib against exact."""
    case = Case(size, dim, structure)
    model = FaceModel(dim=dim, structure=structure)
    rng = np.random.default_rng([size, dim, int(structure * 10)])
    t0 = time.perf_counter()
    gallery = generate(model, size, capture=0)
    mates = np.sort(rng.choice(size, size=args.probes, replace=False))
    probes = generate(model, size, capture=1, ids=mates)
    case.build_s = time.perf_counter() - t0
    labels = np.arange(size, dtype=np.int64)
    alive = np.ones(size, dtype=bool)
    k = args.k
    log(f"[{size:,} x {dim}, structure {structure}] generated in {case.build_s:.1f}s")

    engines: dict[str, Search] = {}
    matrices: list[ExactMatrix] = []
    for dtype in ("float32", "float16"):
        matrix = ExactMatrix(
            dim, size, dtype=dtype, block_rows=args.block_rows, intra_op_threads=args.threads
        )
        matrix.set_rows(labels, gallery)
        case.nbytes[dtype] = matrix.nbytes
        matrices.append(matrix)

        def engine(p: FloatMatrix, m: ExactMatrix = matrix) -> object:
            return m.search(p, k)

        engines[f"onnx {dtype}"] = engine

    def plain(p: FloatMatrix) -> object:
        return numpy_search(gallery, alive, p, k)

    engines["numpy"] = plain

    found, _ = matrices[0].search(probes, k)
    exact_top1 = found[:, 0]
    case.exact_hit = float(np.mean(exact_top1 == mates))
    ref, _ = numpy_search(gallery, alive, probes[:64], k)
    assert np.array_equal(ref[:, 0], exact_top1[:64]), "engine disagrees with numpy"

    index: hnswlib.Index | None = None
    efs: list[int] = []
    threads = args.threads or -1
    if size in args.hnsw_sizes:
        cache = cache_path(args.cache)
        index, case.hnsw_build_s, _ = raw_hnsw(gallery, structure, cache, threads, log)
        log(f"  hnswlib build {case.hnsw_build_s:.1f}s")
        calibration = calibrated_ef(index, gallery, threads)
        case.calibrated_ef = calibration.ef
        case.calibration_met = calibration.met
        case.calibration_hit_rate = calibration.hit_rate
        log(f"  calibrated ef {calibration.ef} (hit rate {calibration.hit_rate:.4f})")
        efs = sorted({*args.efs, calibration.ef})
        for ef in efs:

            def approx(p: FloatMatrix, ix: hnswlib.Index = index, ef: int = max(ef, k)) -> object:
                ix.set_ef(ef)
                return ix.knn_query(p, k=k, num_threads=threads)

            engines[f"hnswlib ef {ef}"] = approx

    for batch in args.batches:
        for name, rate in median_rates(engines, probes, batch, args.singles, args.repeats).items():
            case.rates.setdefault(name, {})[batch] = rate
            log(f"  {name:14s} batch {batch:4d}: {rate:10.1f} probes/s")

    if index is not None:
        for ef in efs:
            index.set_ef(max(ef, k))
            found, _ = index.knn_query(probes, k=k, num_threads=threads)
            top1 = found[:, 0].astype(np.int64)
            hit = float(np.mean(top1 == mates))
            agree = float(np.mean(top1 == exact_top1))
            case.hnsw.append((ef, case.rates[f"hnswlib ef {ef}"], hit, agree))
            log(
                f"  hnswlib ef {ef:3d}: rank-1 hit {hit:.4f} (exact {case.exact_hit:.4f}),"
                f" top-1 = exact {agree:.4f}"
            )
    return case


def log(msg: str) -> None:
    """A progress line, flushed at once."""
    print(msg, flush=True)


def machine() -> list[str]:
    """Markdown list items describing this machine and the libraries' builds."""
    usable = resolve_providers(None)
    return [
        f"- machine: {machine_line()}; {platform.platform()}",
        (
            f"- onnxruntime {ort.__version__}: built with "
            f"{', '.join(ort.get_available_providers())}; usable here: {', '.join(usable)}"
        ),
        (
            f"- numpy {np.__version__}, hnswlib (M={NodeSettings().hnsw_m}, "
            f"ef_construction={NodeSettings().ef_construction})"
        ),
        "- load average (1/5/15 min) when written: "
        + " / ".join(f"{x:.2f}" for x in os.getloadavg())
        + " (other processes share this machine; compare ratios, not absolutes)",
    ]


def report(args: argparse.Namespace, cases: list[Case]) -> str:
    """The run as a markdown section."""
    lines = [
        f"## Exact search on onnxruntime — {now()}",
        "",
        "`" + " ".join(["python -m bench.exact", *sys.argv[1:]]) + "`",
        "",
    ]
    lines += machine()
    lines += [
        (
            f"- k = {args.k}, {args.probes} mated probes (capture 1 of enrolled identities),"
            f" block_rows = {args.block_rows}, intra-op threads = {args.threads or 'default'};"
            f" batch 1 = {args.singles} one-probe calls per run; medians of {args.repeats} runs"
        ),
        (
            f"- data: tunggal_tools.synthetic.{FaceModel()!r} with each row's dim and structure;"
            " gallery = capture 0, probes = capture 1"
        ),
        (
            "- numpy = numpy_topk (matmul + argpartition) over 65,536-row blocks, merged: the"
            " previous ExactMatrix.search minus its per-call copy of each block (numpy's BLAS"
            " threads as it likes); the ratio is onnx float32 / numpy"
        ),
        "",
        "### Exact engines (probes/s)",
        "",
    ]
    batches = args.batches
    head = "| gallery | dim | structure |"
    for b in batches:
        head += f" onnx f32 b{b} | onnx f16 b{b} | numpy b{b} | ratio b{b} |"
    lines += [head, "|" + "---|" * (3 + 4 * len(batches))]
    for c in cases:
        row = f"| {c.size:,} | {c.dim} | {c.structure} |"
        for b in batches:
            f32, f16 = c.rates["onnx float32"][b], c.rates["onnx float16"][b]
            npy = c.rates["numpy"][b]
            row += f" {f32:,.1f} | {f16:,.1f} | {npy:,.1f} | {f32 / npy:.2f}x |"
        lines.append(row)
    lines += [
        "",
        "### Memory the matrix adds (ExactMatrix.nbytes: rows + live mask + bias)",
        "",
        "| gallery | dim | float32 | float16 |",
        "|---|---|---|---|",
    ]
    seen = set()
    for c in cases:
        if (c.size, c.dim) in seen:
            continue
        seen.add((c.size, c.dim))
        lines.append(
            f"| {c.size:,} | {c.dim} | {c.nbytes['float32'] / 2**20:,.1f} MiB |"
            f" {c.nbytes['float16'] / 2**20:,.1f} MiB |"
        )
    with_hnsw = [c for c in cases if c.hnsw]
    if with_hnsw:
        lines += [
            "",
            "### hnswlib vs exact",
            "",
            (
                "Rank-1 hit = top-1 is the probe's mate; exact's rank-1 hit is the ceiling."
                " Ratio = hnswlib probes/s / onnx float32 probes/s. The calibrated ef is the"
                " one a node's self-calibration picks for the index (bench.reference)."
            ),
            "",
            "| gallery | dim | structure | build s | ef | "
            + " | ".join(f"p/s b{b} | ratio b{b}" for b in batches)
            + " | rank-1 hit | exact rank-1 hit | top-1 = exact |",
            "|" + "---|" * (8 + 2 * len(batches)),
        ]
        for c in with_hnsw:
            for ef, rates, hit, agree in c.hnsw:
                cells = " | ".join(
                    f"{rates[b]:,.1f} | {rates[b] / c.rates['onnx float32'][b]:.1f}x"
                    for b in batches
                )
                ef_cell = str(ef)
                if ef == c.calibrated_ef:
                    ef_cell = (
                        f"**{ef} (calibrated)**"
                        if c.calibration_met
                        else f"**{ef} (largest tried: target not met, "
                        f"{c.calibration_hit_rate:.4f} of exact's hits)**"
                    )
                lines.append(
                    f"| {c.size:,} | {c.dim} | {c.structure} | {c.hnsw_build_s:.0f} | "
                    f"{ef_cell} | {cells} | {hit:.4f} | {c.exact_hit:.4f} | {agree:.4f} |"
                )
    skipped = [c for c in cases if not c.hnsw]
    if skipped:
        lines += [
            "",
            "hnswlib not built for: "
            + ", ".join(sorted({f"{c.size:,} x {c.dim}" for c in skipped}))
            + " (see --hnsw-sizes).",
        ]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's arguments (`argv`; default: the process's)."""
    p = command_line(__doc__, prog="python -m bench.exact")
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    p.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    p.add_argument("--structures", type=float, nargs="+", default=[0.0, 0.7])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    p.add_argument("--efs", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument(
        "--hnsw-sizes",
        type=int,
        nargs="*",
        default=None,
        help="sizes to build hnswlib indexes for (default: all of --sizes; 0: none)",
    )
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--probes", type=int, default=1000, help="mated probes (>= largest batch)")
    p.add_argument("--singles", type=int, default=50, help="one-probe calls per batch-1 run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--block-rows", type=int, default=65_536)
    p.add_argument("--threads", type=int, default=0, help="0: library defaults")
    add_cache_option(p)
    args = p.parse_args(argv)
    if args.hnsw_sizes is None:
        args.hnsw_sizes = list(args.sizes)
    if args.probes < max(args.batches):
        p.error("--probes must be at least the largest batch")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (module docstring) with the arguments `argv`."""
    args = parse(argv)
    for line in machine():
        log(line)
    cases = [
        run_case(args, size, dim, structure)
        for size in args.sizes
        for dim in args.dims
        for structure in args.structures
    ]
    section = report(args, cases)
    print("\n" + section)
    if not args.no_write:
        log(f"appended to {append(section)}")


if __name__ == "__main__":
    main()
