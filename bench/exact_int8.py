"""Exact search with the int8 matrix against the float32 one, as a node runs them.

    python -m bench.exact_int8 [--size 1000000] [--dim 128] [--structure 0.7]

One FaceModel gallery (capture 0) in a float32 `ExactMatrix` and an int8
`QuantizedMatrix` whose exact re-rank reads, as in a node, the float32 vectors
of a raw hnswlib index over the same rows (built with the nodes' M and
ef_construction, or loaded from the bench cache). Mated probes (capture 1)
are searched three ways, each at batch 1 and 256:

* top-30 with no floor (Identify exact=true, k=10, without min_score),
* top-30 with min_score 0.5 (dedup: only candidates near a match matter),
* top-1 (calibration, exact rank-1),

reporting probes/s (medians of --repeats interleaved runs), how often the two
answers are identical (label for label), and each matrix's bytes. Appends to
the day's run file under docs/benchmarks/ unless --no-write.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bench.exact import generate, median_rates
from bench.reference import add_cache_option, cache_path, raw_hnsw
from bench.report import command_line, log, machine, now, publish
from matcher.exact import ExactMatrix, FloatMatrix, Labels
from matcher.quantized import QuantizedMatrix
from tunggal_tools.synthetic import FaceModel

QUERIES: tuple[tuple[str, int, float | None], ...] = (
    ("top-30, no floor", 30, None),
    ("top-30, floor 0.5", 30, 0.5),
    ("top-1", 1, None),
)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (module docstring) with the arguments `argv`."""
    p = command_line(__doc__)
    p.add_argument("--size", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--structure", type=float, default=0.7)
    p.add_argument("--probes", type=int, default=512)
    p.add_argument("--singles", type=int, default=20, help="batch-1 calls per run")
    p.add_argument("--repeats", type=int, default=3)
    add_cache_option(p)
    args = p.parse_args(argv)
    model = FaceModel(dim=args.dim, structure=args.structure)
    gallery = generate(model, args.size, capture=0)
    rng = np.random.default_rng(5)
    mates = np.sort(rng.choice(args.size, size=args.probes, replace=False))
    probes = generate(model, args.size, capture=1, ids=mates)
    index, _, _ = raw_hnsw(gallery, args.structure, cache_path(args.cache), log=log)

    def index_rows(labels: Labels) -> FloatMatrix:
        rows: FloatMatrix = np.asarray(index.get_items(labels), dtype=np.float32)
        return rows

    labels = np.arange(args.size, dtype=np.int64)
    full = ExactMatrix(args.dim, args.size, providers=["CPUExecutionProvider"])
    full.set_rows(labels, gallery)
    small = QuantizedMatrix(args.dim, args.size, truth=index_rows)
    small.set_rows(labels, gallery)
    del gallery
    matrices: dict[str, ExactMatrix | QuantizedMatrix] = {"float32": full, "int8": small}

    rows = []
    for name, k, floor in QUERIES:
        floors = None if floor is None else np.full(len(probes), floor, dtype=np.float32)

        def engine(
            m: ExactMatrix | QuantizedMatrix, k: int = k, floor: float | None = floor
        ) -> Callable[[FloatMatrix], object]:
            return lambda p: m.search(p, k, None if floor is None else [floor] * len(p))

        engines = {dtype: engine(m) for dtype, m in matrices.items()}
        rates = {b: median_rates(engines, probes, b, args.singles, args.repeats) for b in (1, 256)}
        a_labels, _ = full.search(probes, k, floors)
        b_labels, _ = small.search(probes, k, floors)
        same = float(np.mean((a_labels == b_labels).all(axis=1)))
        hits = float(np.mean(b_labels[:, 0] == mates))
        for b in (1, 256):
            log(f"{name} batch {b}: " + ", ".join(f"{d} {r:,.1f}/s" for d, r in rates[b].items()))
        rows.append(
            f"| {name} | {rates[1]['float32']:,.1f} / {rates[1]['int8']:,.1f} "
            f"({rates[1]['int8'] / rates[1]['float32']:.2f}x) | {rates[256]['float32']:,.1f} / "
            f"{rates[256]['int8']:,.1f} (**{rates[256]['int8'] / rates[256]['float32']:.2f}x**) | "
            f"{same:.3f} | {hits:.3f} |"
        )
    per_row = {d: m.nbytes / args.size for d, m in matrices.items()}
    text = "\n".join(
        [
            f"## Exact search: int8 matrix against float32 — {now()}",
            "",
            (
                f"Machine: {machine()}. `python -m bench.exact_int8` — {args.size:,} FaceModel "
                f"templates (structure {args.structure}, dim {args.dim}) in a float32 ExactMatrix "
                "(onnxruntime CPU) and an int8 QuantizedMatrix re-ranking from a raw hnswlib "
                f"index's stored vectors, as a node does; {len(probes)} mated probes; probes/s are "
                f"medians of {args.repeats} interleaved runs (batch 1: {args.singles} calls a run)."
            ),
            "",
            (
                "| query | batch 1 p/s: float32 / int8 | batch 256 p/s: float32 / int8 | "
                "answers identical | int8 rank-1 mate hits |"
            ),
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Matrix bytes per row: float32 {per_row['float32']:.0f}, int8 {per_row['int8']:.0f}.",
            "",
        ]
    )
    publish(text, write=not args.no_write)


if __name__ == "__main__":
    main()
