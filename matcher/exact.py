"""The gallery's contiguous template matrix and exhaustive (exact) search.

Row number == HNSW label, so Verify reads a subject's rows here, and `search`
scans every live row: the oracle that approximate search is measured against,
and what `exact=true` Identify uses.

`search` runs an ONNX graph (Gemm + TopK, see matcher.onnx_topk) through
onnxruntime over fixed-size blocks of rows and merges the block top-ks exactly.
Dead rows carry a -inf bias, so they never come back. On the CUDA provider each
block lives on the GPU as an OrtValue, re-uploaded at the next search only when
a write touched it (a dirty flag per block); on the CPU provider the OrtValues
wrap the host matrix itself, so nothing is copied per call on either.

Thread safety: writes (set_rows, clear_rows, grow) need exclusive access - the
Gallery's lock. Searches may run concurrently with each other (the per-block
refresh is serialised internally; InferenceSession.run is thread-safe).
`numpy_topk` is the plain-numpy reference the engine is tested against.

`ExactMatrix` is one of the two `matcher.matrix.SearchMatrix` implementations.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from matcher.onnx_topk import STORAGE_TYPES, BlockTopK, Storage, block_topk, resolve_providers

FloatMatrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]

_BLOCK_ROWS = 65_536
# Probes per graph run: it bounds the score buffer (chunk x block_rows floats), which
# onnxruntime's arena keeps. On the CPU 128 runs as fast as 256 and keeps 81 MiB instead
# of 148 (200k rows, 2026-12-01); a GPU keeps 256, the size its speed was measured at.
_PROBE_CHUNK_CPU = 128
_PROBE_CHUNK_DEVICE = 256


def numpy_topk(
    gallery: FloatMatrix, alive: npt.NDArray[np.bool_], probes: FloatMatrix, k: int
) -> tuple[Labels, FloatMatrix]:
    """Reference exact top-k by cosine over the live rows of `gallery`.

    Returns (labels, scores), each (n_probes, k), best first; slots beyond the
    number of live rows hold label -1 and score -inf.
    """
    n = gallery.shape[0]
    scores = probes.astype(np.float32, copy=False) @ gallery.astype(np.float32, copy=False).T
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


def prepare_search(
    probes: FloatMatrix, dim: int, k: int
) -> tuple[FloatMatrix, Labels, FloatMatrix]:
    """`probes` as contiguous float32 (n, dim) (ValueError otherwise), and the (n, k)
    labels and scores of an answer with every slot empty (-1 and -inf)."""
    probes = np.ascontiguousarray(probes, dtype=np.float32)
    if probes.shape != (len(probes), dim):
        raise ValueError(f"probes must be (n, {dim}), got {probes.shape}")
    n = probes.shape[0]
    labels = np.full((n, max(k, 0)), -1, dtype=np.int64)
    scores = np.full((n, max(k, 0)), -np.inf, dtype=np.float32)
    return probes, labels, scores


def probe_floors(floors: npt.ArrayLike | None, n: int) -> FloatMatrix:
    """One score floor per probe (-inf when none is given)."""
    if floors is None:
        return np.full(n, -np.inf, dtype=np.float32)
    out: FloatMatrix = np.broadcast_to(np.asarray(floors, dtype=np.float32), (n,))
    return out


def merge_blocks(
    block_labels: Sequence[Labels], block_scores: Sequence[FloatMatrix], k: int
) -> tuple[Labels, FloatMatrix]:
    """The k best of per-block top-k answers (labels already global), best first,
    ties by lower label; a -inf score (a dead row or an unfilled slot) gets label -1."""
    scores = np.concatenate(block_scores, axis=1)
    labels = np.concatenate(block_labels, axis=1)
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        labels = np.take_along_axis(labels, part, axis=1)
    order = np.lexsort((labels, -scores), axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    labels = np.take_along_axis(labels, order, axis=1)
    dead = ~np.isfinite(scores)
    labels[dead] = -1
    scores[dead] = -np.inf
    return labels, scores


@dataclass(frozen=True)
class _Resident:
    """One block's inputs as the engine reads them."""

    start: int
    stop: int
    data: ort.OrtValue
    bias: ort.OrtValue
    host: npt.NDArray[Any] | None  # the host matrix the OrtValues wrap, None for copies


class ExactMatrix:
    """Templates as rows of one growable matrix, with a live-row mask.

    Args:
        dim: template dimension.
        capacity: rows allocated up front (see `grow`).
        dtype: storage type, "float32" or "float16" (half the memory; scores
            are still computed and returned in float32, from the rounded rows).
        block_rows: rows per search block (the unit of upload and of scoring).
        providers: onnxruntime providers, e.g. ["CPUExecutionProvider"];
            None picks CUDA when onnxruntime can start it here, else CPU.
        intra_op_threads: onnxruntime intra-op threads (0: its default).
    """

    def __init__(
        self,
        dim: int,
        capacity: int,
        *,
        dtype: str = "float32",
        block_rows: int = _BLOCK_ROWS,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
    ) -> None:
        if dtype not in STORAGE_TYPES:
            raise ValueError(f"dtype must be one of {STORAGE_TYPES}, not {dtype!r}")
        if block_rows < 1:
            raise ValueError("block_rows must be positive")
        if providers is not None:
            resolve_providers(providers)  # reject unknown names now, not at first search
        self.dim = dim
        self.dtype: Storage = "float16" if dtype == "float16" else "float32"
        self.block_rows = block_rows
        self._providers = None if providers is None else tuple(providers)
        self._intra_op_threads = intra_op_threads
        np_dtype = np.float16 if self.dtype == "float16" else np.float32
        self._data: npt.NDArray[Any] = np.zeros((capacity, dim), dtype=np_dtype)
        self._alive: npt.NDArray[np.bool_] = np.zeros(capacity, dtype=bool)
        # 0 for a live row, -inf for a dead one: added to every score in the graph.
        self._bias: FloatMatrix = np.full(capacity, -np.inf, dtype=np.float32)
        self._high = 0  # one past the highest row ever set
        nblocks = self._nblocks(capacity)
        self._dirty: npt.NDArray[np.bool_] = np.ones(nblocks, dtype=bool)
        self._resident: list[_Resident | None] = [None] * nblocks
        self._engine_obj: BlockTopK | None = None
        self._copy_blocks: bool | None = None  # None: copy unless the engine is on the CPU
        self._sync_lock = threading.Lock()

    def _nblocks(self, rows: int) -> int:
        return -(-rows // self.block_rows)

    @property
    def capacity(self) -> int:
        """Rows allocated."""
        return int(self._data.shape[0])

    @property
    def nbytes(self) -> int:
        """Host bytes held by the matrix, its live mask and its score bias."""
        return int(self._data.nbytes + self._alive.nbytes + self._bias.nbytes)

    @property
    def device_nbytes(self) -> int:
        """Bytes of block copies held on the device (0 when blocks wrap host memory)."""
        with self._sync_lock:
            return sum(
                int(r.data.tensor_size_in_bytes() + r.bias.tensor_size_in_bytes())
                for r in self._resident
                if r is not None and r.host is None
            )

    @property
    def providers(self) -> tuple[str, ...]:
        """The onnxruntime providers searches run on (starts the engine)."""
        return self._engine().providers

    def grow(self, capacity: int) -> None:
        """Reallocate to `capacity` rows (never shrinks)."""
        if capacity <= self.capacity:
            return
        data = np.zeros((capacity, self.dim), dtype=self._data.dtype)
        data[: self.capacity] = self._data
        alive = np.zeros(capacity, dtype=bool)
        alive[: self.capacity] = self._alive
        bias = np.full(capacity, -np.inf, dtype=np.float32)
        bias[: self.capacity] = self._bias
        with self._sync_lock:
            self._data, self._alive, self._bias = data, alive, bias
            # Device copies stay valid; blocks wrapping the old host arrays are
            # dropped (so the old arrays are freed now) and rewrapped at the next search.
            extra = self._nblocks(capacity) - len(self._resident)
            self._dirty = np.concatenate([self._dirty, np.ones(extra, dtype=bool)])
            self._resident = [
                r if r is not None and r.host is None else None for r in self._resident
            ] + [None] * extra

    def set_rows(self, labels: Labels, vectors: FloatMatrix) -> None:
        """Store `vectors` (already normalised) at rows `labels`, live."""
        self._data[labels] = vectors
        self._alive[labels] = True
        self._bias[labels] = 0.0
        self._dirty[np.asarray(labels) // self.block_rows] = True
        if len(labels):
            self._high = max(self._high, int(labels.max()) + 1)

    def clear_rows(self, labels: Labels) -> None:
        """Mark rows dead and zero them."""
        self._data[labels] = 0.0
        self._alive[labels] = False
        self._bias[labels] = -np.inf
        self._dirty[np.asarray(labels) // self.block_rows] = True

    def rows(self, labels: Labels) -> FloatMatrix:
        """Copies of the rows at `labels` (float32 whatever the storage type)."""
        out: FloatMatrix = self._data[labels].astype(np.float32, copy=False)
        return out

    def is_alive(self, labels: Labels) -> npt.NDArray[np.bool_]:
        """Which of `labels` are live rows."""
        out: npt.NDArray[np.bool_] = self._alive[labels]
        return out

    def _engine(self) -> BlockTopK:
        with self._sync_lock:
            if self._engine_obj is None:
                self._engine_obj = block_topk(self.dtype, self._providers, self._intra_op_threads)
            return self._engine_obj

    def _blocks(self, engine: BlockTopK) -> list[_Resident]:
        """The blocks covering rows [0, high), refreshing those a write touched."""
        with self._sync_lock:
            copy = (not engine.on_cpu) if self._copy_blocks is None else self._copy_blocks
            out: list[_Resident] = []
            for j in range(self._nblocks(self._high)):
                start = j * self.block_rows
                stop = min(start + self.block_rows, self._high)
                r = self._resident[j]
                if (
                    r is None
                    or self._dirty[j]
                    or r.stop != stop
                    or (r.host is not None and r.host is not self._data)
                ):
                    data = self._data[start:stop]
                    bias = self._bias[start:stop]
                    if copy:
                        data, bias = data.copy(), bias.copy()
                    r = _Resident(
                        start=start,
                        stop=stop,
                        data=engine.to_device(data),
                        bias=engine.to_device(bias),
                        host=None if copy or not engine.on_cpu else self._data,
                    )
                    self._resident[j] = r
                    self._dirty[j] = False
                out.append(r)
            return out

    @staticmethod
    def _search_chunk(
        engine: BlockTopK, blocks: list[_Resident], probes: FloatMatrix, k: int
    ) -> tuple[Labels, FloatMatrix]:
        """Top-min(k, rows) over `blocks` for each probe; dead slots -1 / -inf."""
        probe_value = engine.to_device(probes)
        block_scores: list[FloatMatrix] = []
        block_labels: list[Labels] = []
        for r in blocks:
            res = engine.run(probe_value, r.data, r.bias, min(k, r.stop - r.start))
            block_scores.append(res.scores)
            block_labels.append(res.indices + r.start)
        return merge_blocks(block_labels, block_scores, k)

    def search(
        self, probes: FloatMatrix, k: int, floors: npt.ArrayLike | None = None
    ) -> tuple[Labels, FloatMatrix]:
        """Exact top-k live rows for each probe (rows of `probes`, normalised).

        Returns (labels, scores), each (n_probes, k), best first (ties: lower
        label first among those kept); slots beyond the number of live rows,
        and with `floors` (one score per probe) those scoring under the
        probe's floor, hold -1 and -inf.
        """
        probes, out_labels, out_scores = prepare_search(probes, self.dim, k)
        nprobe = probes.shape[0]
        if k <= 0 or nprobe == 0 or self._high == 0:
            return out_labels, out_scores
        engine = self._engine()
        blocks = self._blocks(engine)
        # A chunk of probes at a time: the graph's scores for one block are
        # chunk x block_rows floats (32 MiB at 128 x 65,536), whatever the batch.
        chunk = _PROBE_CHUNK_CPU if engine.on_cpu else _PROBE_CHUNK_DEVICE
        for lo in range(0, nprobe, chunk):
            labels, scores = self._search_chunk(engine, blocks, probes[lo : lo + chunk], k)
            kk = scores.shape[1]
            out_labels[lo : lo + chunk, :kk] = labels
            out_scores[lo : lo + chunk, :kk] = scores
        if floors is not None:
            below = out_scores < probe_floors(floors, nprobe)[:, None]
            out_labels[below] = -1
            out_scores[below] = -np.inf
        return out_labels, out_scores
