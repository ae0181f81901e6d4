"""References the benchmarks measure against: exact numpy search and the ef a
node's calibration would pick for one raw hnswlib index."""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import hnswlib
import numpy as np
import numpy.typing as npt

from bench.report import rss_bytes
from matcher.calibration import DEFAULT_GRID, Calibration, choose_ef, make_probes
from tunggal.settings import NodeSettings

FloatMatrix = npt.NDArray[np.float32]

_BLOCK = 100_000


def exact_top1(gallery: FloatMatrix, probes: FloatMatrix) -> npt.NDArray[np.int64]:
    """Index of each probe's most similar gallery row, by exhaustive numpy search."""
    best = np.full(len(probes), -np.inf, dtype=np.float32)
    arg = np.zeros(len(probes), dtype=np.int64)
    for lo in range(0, len(gallery), _BLOCK):
        scores = probes @ gallery[lo : lo + _BLOCK].T
        blk = scores.argmax(axis=1)
        val = scores[np.arange(len(probes)), blk]
        better = val > best
        best[better], arg[better] = val[better], blk[better] + lo
    return arg


def exact_topk(gallery: FloatMatrix, probes: FloatMatrix, k: int) -> npt.NDArray[np.int64]:
    """Indices of each probe's `k` most similar gallery rows, best first, by
    exhaustive numpy search (ties: lower index first)."""
    best_idx = np.zeros((len(probes), 0), dtype=np.int64)
    best_val = np.zeros((len(probes), 0), dtype=np.float32)
    for lo in range(0, len(gallery), _BLOCK):
        scores = probes @ gallery[lo : lo + _BLOCK].T
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        idx = np.concatenate([best_idx, part + lo], axis=1)
        val = np.concatenate([best_val, np.take_along_axis(scores, part, axis=1)], axis=1)
        order = np.lexsort((idx, -val), axis=1)[:, :k]
        best_idx = np.take_along_axis(idx, order, axis=1)
        best_val = np.take_along_axis(val, order, axis=1)
    return best_idx


def recall_at(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> float:
    """Mean share of each row of `truth` (exact top-k) that `found` holds too."""
    k = int(truth.shape[1])
    hits = 0
    for f, t in zip(found, truth, strict=True):
        hits += len(set(f.tolist()) & set(t.tolist()))
    return hits / (k * len(truth))


def calibrated_ef(index: hnswlib.Index, gallery: FloatMatrix, threads: int = -1) -> Calibration:
    """The ef a node's calibration picks for `index` over `gallery` (labels =
    row numbers): the same probes (gallery samples plus genuine-level noise),
    target and grid as `matcher.gallery.Gallery.calibrate`, with numpy exact
    search as the oracle. Leaves the index's ef at the last one tried."""
    d = NodeSettings()
    rng = np.random.default_rng(7)
    pick = rng.choice(len(gallery), size=min(d.calibration_probes, len(gallery)), replace=False)
    probes = make_probes(gallery[pick], d.calibration_genuine, rng)
    exact = exact_top1(gallery, probes)

    def hnsw_top(ef: int) -> list[str]:
        index.set_ef(ef)
        labels, _ = index.knn_query(probes, k=1, num_threads=threads)
        return [str(label) for label in labels[:, 0]]

    return choose_ef(
        [str(i) for i in pick],
        [str(i) for i in exact],
        hnsw_top,
        DEFAULT_GRID,
        d.calibration_target,
        len(gallery),
    )


DEFAULT_CACHE = Path(tempfile.gettempdir()) / "tunggal-bench-cache"


def add_cache_option(parser: argparse.ArgumentParser) -> None:
    """--cache: where `raw_hnsw` keeps the reference indexes it builds (shared by the benches)."""
    parser.add_argument(
        "--cache",
        default=str(DEFAULT_CACHE),
        help="where raw hnswlib reference indexes are kept and reused between runs and "
        "benchmarks (build s is then the first build's); '' to always build",
    )


def cache_path(value: str) -> Path | None:
    """The --cache value as `raw_hnsw` takes it (None: '', always build)."""
    return Path(value) if value else None


def raw_index_file(cache: Path, structure: float, n: int, dim: int) -> Path:
    """Where `raw_hnsw` keeps the raw index of `n` FaceModel templates (its build
    time and memory beside it, same name, .json): the name holds size, dim,
    structure and the nodes' M and ef_construction."""
    d = NodeSettings()
    return cache / f"raw-s{structure}-{n}-d{dim}-M{d.hnsw_m}-efc{d.ef_construction}.bin"


def raw_hnsw(
    gallery: FloatMatrix,
    structure: float,
    cache: Path | None,
    threads: int = -1,
    log: Callable[[str], None] = print,
) -> tuple[hnswlib.Index, float, float]:
    """Raw hnswlib over `gallery` (labels = row numbers) with a node's M and
    ef_construction: (index, build seconds, RSS bytes per template).

    Saved under `cache` (and loaded from there next time, with the build time
    and memory measured then): building 1M templates takes most of an hour on
    2 cores. The file name holds size, dim, FaceModel structure, M and
    ef_construction; the FaceModel rows are the same for the same ids, so
    bench.identify and bench.exact share entries."""
    d = NodeSettings()
    n, dim = gallery.shape
    index = hnswlib.Index(space="cosine", dim=dim)
    if cache is not None:
        path = raw_index_file(cache, structure, n, dim)
        meta_path = path.with_suffix(".json")
        if path.exists() and meta_path.exists():
            index.load_index(str(path), max_elements=n)
            meta = json.loads(meta_path.read_text())
            log(f"raw hnswlib loaded from {path}")
            return index, float(meta["build_s"]), float(meta["bytes_per_template"])
    gc.collect()
    rss0 = rss_bytes()
    index.init_index(n, ef_construction=d.ef_construction, M=d.hnsw_m, random_seed=1)
    t0 = time.perf_counter()
    index.add_items(gallery, np.arange(n), num_threads=threads)
    build = time.perf_counter() - t0
    per_template = (rss_bytes() - rss0) / n
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        index.save_index(str(path))
        meta_path.write_text(json.dumps({"build_s": build, "bytes_per_template": per_template}))
    return index, build, per_template
