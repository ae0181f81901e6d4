"""Exact search over int8 rows: a quantised scan, a proven bound, an exact re-rank.

`QuantizedMatrix` is the int8 storage of the exact-search matrix
(``TUNGGAL_NODE_EXACT_DTYPE=int8``): each template is kept as int8 codes with
a scale of its own (``x ~ scale * q``), d + 12 bytes a row instead of 4 d.
Its answers are still exact, not approximate:

1. **Scan.** Each probe is quantised the same way and scored against every
   live row by integer products (onnxruntime's MatMulIntegerToFloat,
   `matcher.onnx_topk.build_int8_model`); the F best approximate scores come
   back per probe.
2. **Bound.** For unit vectors p and x, ``|p.x - approx| <= e_x + e_p (1 + e_x)``
   (Cauchy-Schwarz), where e_x = ||x - scale_x q_x|| is measured and stored per
   row and e_p likewise per probe; a small slack covers float32 rounding.
   Every row outside the F returned has approx <= the F-th one, so the
   largest error over all rows bounds what it could truly score.
3. **Re-rank.** Let L be the k-th largest lower bound among the candidates
   (or the caller's floor, if higher). Every row that can score >= L is a
   candidate whose upper bound reaches L, provided the F-th approximate score
   plus the largest error is below L; if not, the probe is scanned again with
   4 F. Those candidates are scored exactly from the float32 rows (`truth`:
   the HNSW index's stored vectors) and the k best kept, ties by lower label.

The result is the exact top-k (with `floors`: the exact top-k among rows
scoring at least the floor, which may be fewer than k). Only the candidates
the bound cannot rule out are read in float32: about k plus the rows within
a few hundredths of the k-th score, and with a floor near the verify
threshold (dedup) little more than the mates themselves.

Thread safety as for `matcher.exact.ExactMatrix`: writes need the gallery's
exclusive lock, searches may run concurrently. CPU only.

`QuantizedMatrix` is one of the two `matcher.matrix.SearchMatrix` implementations.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from matcher.exact import merge_blocks, prepare_search, probe_floors
from matcher.onnx_topk import Int8BlockTopK, int8_block_topk

FloatMatrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]
Truth = Callable[[Labels], FloatMatrix]

_BLOCK_ROWS = 65_536
_PROBE_CHUNK = 128  # probes per graph run: onnxruntime's arena keeps about 75 MiB after a
# batch (143 MiB at 256 probes a run, at the same speed; 64 probes run 15 % slower)
_SLACK = 1e-4  # float32 rounding of the integer products' scaling and of the exact re-score
_GROWTH = 4  # a probe whose candidates cannot prove completeness is scanned again with 4 F


def quantize(
    vectors: FloatMatrix,
) -> tuple[npt.NDArray[np.int8], FloatMatrix, FloatMatrix]:
    """(int8 codes, scale per row, error norm per row, rounded up) of `vectors`."""
    x = np.asarray(vectors, dtype=np.float32)
    top = np.abs(x).max(axis=1)
    scale = np.where(top > 0, top / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(x / scale[:, None]), -127, 127)
    residual = x.astype(np.float64) - codes * scale[:, None].astype(np.float64)
    error = np.linalg.norm(residual, axis=1) * (1 + 1e-6) + 1e-9
    return codes.astype(np.int8), scale, error.astype(np.float32)


class QuantizedMatrix:
    """Templates as int8 rows with exact search (see the module docstring).

    Args:
        dim: template dimension.
        capacity: rows allocated up front (see `grow`).
        truth: float32 rows of live labels, the source of exact scores and
            of `rows` (the gallery passes its HNSW index's stored vectors).
        block_rows: rows per scan block.
        intra_op_threads: onnxruntime intra-op threads (0: its default).
    """

    def __init__(
        self,
        dim: int,
        capacity: int,
        *,
        truth: Truth,
        block_rows: int = _BLOCK_ROWS,
        intra_op_threads: int = 0,
    ) -> None:
        if block_rows < 1:
            raise ValueError("block_rows must be positive")
        self.dim = dim
        self.block_rows = block_rows
        self._truth = truth
        self._intra_op_threads = intra_op_threads
        self._blocks: list[npt.NDArray[np.int8]] = []  # (dim, width): one row per column
        self._scale: FloatMatrix = np.ones(0, dtype=np.float32)
        self._bias: FloatMatrix = np.zeros(0, dtype=np.float32)  # 0 live, -inf dead
        self._error: FloatMatrix = np.zeros(0, dtype=np.float32)
        self._error_max = 0.0  # over every row ever set: bounds any live row's error
        self._high = 0  # one past the highest row ever set
        self._engine_obj: Int8BlockTopK | None = None
        self.grow(capacity)

    @property
    def capacity(self) -> int:
        """Rows allocated."""
        return int(self._scale.shape[0])

    @property
    def nbytes(self) -> int:
        """Host bytes held: the codes, and each row's scale, error and score bias."""
        return int(
            sum(b.nbytes for b in self._blocks)
            + self._scale.nbytes
            + self._bias.nbytes
            + self._error.nbytes
        )

    def grow(self, capacity: int) -> None:
        """Reallocate to `capacity` rows (never shrinks)."""
        old = self.capacity
        if capacity <= old:
            return
        for name, fill in (("_scale", 1.0), ("_bias", -np.inf), ("_error", 0.0)):
            grown = np.full(capacity, fill, dtype=np.float32)
            grown[:old] = getattr(self, name)
            setattr(self, name, grown)
        blocks = self._blocks
        if blocks and blocks[-1].shape[1] < self.block_rows:  # widen the partial last block
            start = (len(blocks) - 1) * self.block_rows
            wider = np.zeros((self.dim, min(self.block_rows, capacity - start)), dtype=np.int8)
            wider[:, : blocks[-1].shape[1]] = blocks[-1]
            blocks[-1] = wider
        start = len(blocks) * self.block_rows
        while start < capacity:
            blocks.append(np.zeros((self.dim, min(self.block_rows, capacity - start)), np.int8))
            start += self.block_rows

    def set_rows(self, labels: Labels, vectors: FloatMatrix) -> None:
        """Store `vectors` (already normalised) at rows `labels`, live."""
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) == 0:
            return
        codes, scale, error = quantize(vectors)
        self._put(labels, codes)
        self._scale[labels] = scale
        self._error[labels] = error
        self._bias[labels] = 0.0
        self._error_max = max(self._error_max, float(error.max()))
        self._high = max(self._high, int(labels.max()) + 1)

    def clear_rows(self, labels: Labels) -> None:
        """Mark rows dead and zero them."""
        labels = np.asarray(labels, dtype=np.int64)
        self._put(labels, np.zeros((len(labels), self.dim), dtype=np.int8))
        self._bias[labels] = -np.inf
        self._scale[labels] = 1.0
        self._error[labels] = 0.0

    def _put(self, labels: Labels, codes: npt.NDArray[np.int8]) -> None:
        blocks = labels // self.block_rows
        for block in np.unique(blocks).tolist():
            where = blocks == block
            self._blocks[block][:, labels[where] % self.block_rows] = codes[where].T

    def rows(self, labels: Labels) -> FloatMatrix:
        """Float32 rows at live `labels`, from `truth`."""
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(self._truth(labels), dtype=np.float32)

    def is_alive(self, labels: Labels) -> npt.NDArray[np.bool_]:
        """Which of `labels` are live rows."""
        out: npt.NDArray[np.bool_] = self._bias[labels] == 0.0
        return out

    def _engine(self) -> Int8BlockTopK:
        if self._engine_obj is None:
            self._engine_obj = int8_block_topk(self._intra_op_threads)
        return self._engine_obj

    def search(
        self, probes: FloatMatrix, k: int, floors: npt.ArrayLike | None = None
    ) -> tuple[Labels, FloatMatrix]:
        """Exact top-k live rows for each probe (rows of `probes`, normalised).

        With `floors` (one score per probe), only rows scoring at least the
        probe's floor are returned. Returns (labels, scores), each
        (n_probes, k), best first, ties by lower label; empty slots hold -1
        and -inf.
        """
        probes, out_labels, out_scores = prepare_search(probes, self.dim, k)
        nprobe = probes.shape[0]
        if k <= 0 or nprobe == 0 or self._high == 0:
            return out_labels, out_scores
        floor = probe_floors(floors, nprobe)
        codes, probe_scale, probe_error = quantize(probes)
        shifted = (codes.astype(np.int16) + 128).astype(np.uint8)
        for lo in range(0, nprobe, _PROBE_CHUNK):
            part = slice(lo, lo + _PROBE_CHUNK)
            labels, scores = self._search_chunk(
                probes[part], shifted[part], probe_scale[part], probe_error[part], floor[part], k
            )
            out_labels[part], out_scores[part] = labels, scores
        return out_labels, out_scores

    def _search_chunk(
        self,
        probes: FloatMatrix,
        shifted: npt.NDArray[np.uint8],
        probe_scale: FloatMatrix,
        probe_error: FloatMatrix,
        floor: FloatMatrix,
        k: int,
    ) -> tuple[Labels, FloatMatrix]:
        n = len(probes)
        out_labels = np.full((n, k), -1, dtype=np.int64)
        out_scores = np.full((n, k), -np.inf, dtype=np.float32)
        outside = self._error_max + probe_error * (1 + self._error_max) + _SLACK
        pending = np.arange(n)
        fetch = min(self._high, 4 * k + 64)
        while len(pending):
            cand, approx = self._scan(shifted[pending], fetch)
            approx *= probe_scale[pending, None]
            valid = cand >= 0
            row_error = self._error[np.where(valid, cand, 0)]
            radius = row_error + probe_error[pending, None] * (1 + row_error) + _SLACK
            low = np.where(valid, approx - radius, -np.inf)
            high = np.where(valid, approx + radius, -np.inf)
            kth_low = (
                -np.partition(-low, k - 1, axis=1)[:, k - 1]
                if low.shape[1] >= k
                else np.full(len(pending), -np.inf, dtype=np.float32)
            )
            threshold = np.maximum(kth_low, floor[pending])
            last = approx[:, -1]  # the F-th approximate score (-inf: every live row came back)
            complete = (
                (fetch >= self._high) | ~np.isfinite(last) | (last + outside[pending] < threshold)
            )
            done = np.nonzero(complete)[0]
            if len(done):
                need = valid[done] & (high[done] >= threshold[done, None])
                self._rerank(
                    probes[pending[done]],
                    cand[done],
                    need,
                    floor[pending[done]],
                    k,
                    out_labels,
                    out_scores,
                    pending[done],
                )
            pending = pending[~complete]
            fetch = min(self._high, fetch * _GROWTH)
        return out_labels, out_scores

    def _scan(self, shifted: npt.NDArray[np.uint8], fetch: int) -> tuple[Labels, FloatMatrix]:
        """The `fetch` best approximate (probe-code) scores per probe over rows [0, high):
        labels (-1 where fewer live rows) and scores (-inf there), best first."""
        engine = self._engine()
        scores: list[FloatMatrix] = []
        labels: list[Labels] = []
        for j, block in enumerate(self._blocks):
            start = j * self.block_rows
            if start >= self._high:
                break
            width = block.shape[1]
            res = engine.run(
                shifted,
                block,
                self._scale[start : start + width],
                self._bias[start : start + width],
                min(fetch, width),
            )
            scores.append(res.scores)
            labels.append(res.indices + start)
        return merge_blocks(labels, scores, fetch)

    def _rerank(
        self,
        probes: FloatMatrix,
        cand: Labels,
        need: npt.NDArray[np.bool_],
        floor: FloatMatrix,
        k: int,
        out_labels: Labels,
        out_scores: FloatMatrix,
        rows: npt.NDArray[np.intp],
    ) -> None:
        """Exact scores of the needed candidates; the k best (>= floor) into `rows` of out."""
        which, slot = np.nonzero(need)
        labels = cand[which, slot]
        if len(labels) == 0:
            return
        unique, inverse = np.unique(labels, return_inverse=True)
        vectors = self.rows(unique)
        exact = np.einsum("ij,ij->i", vectors[inverse], probes[which]).astype(np.float32)
        keep = exact >= floor[which]
        which, labels, exact = which[keep], labels[keep], exact[keep]
        order = np.lexsort((labels, -exact, which))
        which, labels, exact = which[order], labels[order], exact[order]
        first = np.searchsorted(which, np.arange(len(probes)))
        rank = np.arange(len(which)) - first[which]
        top = rank < k
        out_labels[rows[which[top]], rank[top]] = labels[top]
        out_scores[rows[which[top]], rank[top]] = exact[top]
