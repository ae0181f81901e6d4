"""References the benchmarks measure against: exact numpy search and the ef a
node's calibration would pick for one raw hnswlib index."""

from __future__ import annotations

import hnswlib
import numpy as np
import numpy.typing as npt

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
