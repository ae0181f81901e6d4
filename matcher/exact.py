"""The gallery's contiguous template matrix and exhaustive (exact) search.

Row number == HNSW label, so HNSW hits are re-scored exactly from here, Verify
reads a subject's rows, and `search` scans every live row: the oracle that
approximate search is measured against, and what `exact=true` Identify uses.
Not thread-safe by itself: the Gallery's lock guards it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]

_BLOCK_ROWS = 65_536


def numpy_topk(
    gallery: FloatMatrix, alive: npt.NDArray[np.bool_], probes: FloatMatrix, k: int
) -> tuple[Labels, FloatMatrix]:
    """Reference exact top-k by cosine over the live rows of `gallery`.

    Returns (labels, scores), each (n_probes, k), best first; slots beyond the
    number of live rows hold label -1 and score -inf.
    """
    n = gallery.shape[0]
    scores = probes.astype(np.float32) @ gallery.astype(np.float32).T
    scores[:, ~alive[:n]] = -np.inf
    kk = min(k, n)
    out_labels = np.full((probes.shape[0], k), -1, dtype=np.int64)
    out_scores = np.full((probes.shape[0], k), -np.inf, dtype=np.float32)
    if kk == 0:
        return out_labels, out_scores
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    top_scores = np.take_along_axis(part_scores, order, axis=1)
    top[~np.isfinite(top_scores)] = -1
    out_labels[:, :kk] = top
    out_scores[:, :kk] = top_scores
    return out_labels, out_scores


class ExactMatrix:
    """Templates as rows of one growable matrix, with a live-row mask."""

    def __init__(self, dim: int, capacity: int) -> None:
        self.dim = dim
        self._data: FloatMatrix = np.zeros((capacity, dim), dtype=np.float32)
        self._alive: npt.NDArray[np.bool_] = np.zeros(capacity, dtype=bool)
        self._high = 0  # one past the highest row ever set

    @property
    def capacity(self) -> int:
        """Rows allocated."""
        return int(self._data.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the matrix and its mask."""
        return int(self._data.nbytes + self._alive.nbytes)

    def grow(self, capacity: int) -> None:
        """Reallocate to `capacity` rows (never shrinks)."""
        if capacity <= self.capacity:
            return
        data = np.zeros((capacity, self.dim), dtype=np.float32)
        data[: self.capacity] = self._data
        alive = np.zeros(capacity, dtype=bool)
        alive[: self.capacity] = self._alive
        self._data, self._alive = data, alive

    def set_rows(self, labels: Labels, vectors: FloatMatrix) -> None:
        """Store `vectors` (already normalised) at rows `labels`, live."""
        self._data[labels] = vectors
        self._alive[labels] = True
        if len(labels):
            self._high = max(self._high, int(labels.max()) + 1)

    def clear_rows(self, labels: Labels) -> None:
        """Mark rows dead and zero them."""
        self._data[labels] = 0.0
        self._alive[labels] = False

    def rows(self, labels: Labels) -> FloatMatrix:
        """Copies of the rows at `labels`."""
        out: FloatMatrix = self._data[labels].copy()
        return out

    def is_alive(self, labels: Labels) -> npt.NDArray[np.bool_]:
        """Which of `labels` are live rows."""
        out: npt.NDArray[np.bool_] = self._alive[labels]
        return out

    def search(self, probes: FloatMatrix, k: int) -> tuple[Labels, FloatMatrix]:
        """Exact top-k rows for each probe (rows of `probes`, normalised).

        Scans in blocks so the score matrix stays small; merges block top-ks.
        """
        nprobe = probes.shape[0]
        best_labels = np.full((nprobe, k), -1, dtype=np.int64)
        best_scores = np.full((nprobe, k), -np.inf, dtype=np.float32)
        for start in range(0, self._high, _BLOCK_ROWS):
            stop = min(start + _BLOCK_ROWS, self._high)
            labels, scores = numpy_topk(self._data[start:stop], self._alive[start:stop], probes, k)
            labels = np.where(labels >= 0, labels + start, -1)
            merged_labels = np.concatenate([best_labels, labels], axis=1)
            merged_scores = np.concatenate([best_scores, scores], axis=1)
            order = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
            best_labels = np.take_along_axis(merged_labels, order, axis=1)
            best_scores = np.take_along_axis(merged_scores, order, axis=1)
        return best_labels, best_scores
