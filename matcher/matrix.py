"""What the gallery needs of an exact-search matrix.

Two implement it: `matcher.exact.ExactMatrix` (float32 or float16 rows,
onnxruntime on the CPU or a GPU) and `matcher.quantized.QuantizedMatrix`
(int8 rows, exact scores from float32 truth). The gallery types against
this Protocol only, so either can serve a shard (NodeSettings.exact_dtype).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]


class SearchMatrix(Protocol):
    """Templates as rows addressed by label, with exact top-k search over the live ones.

    Writes (`grow`, `set_rows`, `clear_rows`) need the gallery's exclusive
    lock; reads its shared lock.
    """

    @property
    def capacity(self) -> int:
        """Rows allocated."""
        ...

    @property
    def nbytes(self) -> int:
        """Host bytes held."""
        ...

    def grow(self, capacity: int) -> None:
        """Reallocate to `capacity` rows (never shrinks)."""
        ...

    def set_rows(self, labels: Labels, vectors: FloatMatrix) -> None:
        """Store `vectors` (already normalised) at rows `labels`, live."""
        ...

    def clear_rows(self, labels: Labels) -> None:
        """Mark rows dead."""
        ...

    def rows(self, labels: Labels) -> FloatMatrix:
        """Float32 copies of the live rows at `labels`."""
        ...

    def is_alive(self, labels: Labels) -> npt.NDArray[np.bool_]:
        """Which of `labels` are live rows."""
        ...

    def search(
        self, probes: FloatMatrix, k: int, floors: npt.ArrayLike | None = None
    ) -> tuple[Labels, FloatMatrix]:
        """Exact top-k live rows of each probe, best first; with `floors` (one
        score per probe) only rows scoring at least it. Empty slots: -1, -inf."""
        ...
