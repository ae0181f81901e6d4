"""What searches read: the HNSW index, the exact matrix and the owners, under one lock.

Searches and Verify hold the lock shared and run in parallel. A write
becomes visible in one exclusive section (`publish`): rows, label -> subject
and subject -> labels change together, so no reader ever sees a subject
between its old templates and its new ones.
"""

from __future__ import annotations

import hnswlib
import numpy as np
import structlog

from matcher.gallery.values import FloatMatrix, Labels
from matcher.matrix import SearchMatrix
from matcher.memtrim import release_free_memory
from matcher.owners import OwnerTable
from matcher.rwlock import RWLock
from matcher.store import Store

_log = structlog.get_logger("matcher.gallery")


def capacity_for(needed: int) -> int:
    """Capacity to grow to so that `needed` slots fit (doubling, 1024 minimum)."""
    cap = 1024
    while cap < needed:
        cap *= 2
    return cap


class IndexRows:
    """The float32 (normalised) vectors hnswlib stores, by label: the int8 matrix's
    exact scores come from here, as hnswlib's own do (`truth` of QuantizedMatrix).

    A label the index cannot return (it would be a bug) is read from the store,
    the truth. `index` is set once the index is loaded or built.
    """

    def __init__(self, store: Store) -> None:
        self.index: hnswlib.Index  # set by recovery before any search can ask
        self._store = store

    def __call__(self, labels: Labels) -> FloatMatrix:
        """The float32 rows at live `labels`."""
        try:
            rows: FloatMatrix = np.asarray(self.index.get_items(labels), dtype=np.float32)
        except RuntimeError as exc:  # hnswlib: "Label not found"
            _log.error("index_rows_missing", labels=len(labels), error=str(exc))
            return self._store.vectors(labels)
        return rows


class ShardMemory:
    """The in-memory, searchable state of one gallery.

    `alive` counts live templates; `ef` is the HNSW beam width searches use
    (set by calibration). Readers hold `lock` shared; `publish`, `hide` and
    `grow` take it exclusively.
    """

    def __init__(
        self, index: hnswlib.Index, matrix: SearchMatrix, owners: OwnerTable, alive: int, ef: int
    ) -> None:
        self.lock = RWLock()
        self.index = index
        self.matrix = matrix
        self.owners = owners
        self.alive = alive
        self.ef = ef

    def publish(
        self, added: Labels, vectors: FloatMatrix, subjects: list[str], removed: Labels
    ) -> None:
        """Make a committed write visible at once: rows `added` (already in the HNSW
        index) owned by `subjects`, then `removed` hidden."""
        with self.lock.exclusive():
            self.matrix.set_rows(added, vectors)
            self.owners.assign(added, subjects)
            self._hide(removed)
            self.alive += len(added) - len(removed)

    def hide(self, labels: Labels) -> None:
        """Make `labels` invisible to searches and Verify at once."""
        with self.lock.exclusive():
            self._hide(labels)
            self.alive -= len(labels)

    def _hide(self, labels: Labels) -> None:
        if len(labels):
            self.matrix.clear_rows(labels)
            self.owners.clear(labels)

    def grow(self, capacity: int) -> None:
        """Room for `capacity` templates in the index, the matrix and the owners."""
        with self.lock.exclusive():
            self.index.resize_index(capacity)
            self.matrix.grow(capacity)
            self.owners.grow(capacity)
        release_free_memory()  # the index's and matrix's previous buffers
        _log.info("gallery_grown", capacity=capacity)

    def live_labels(self) -> Labels:
        """Every live label (hold the lock shared)."""
        live: Labels = np.nonzero(self.matrix.is_alive(np.arange(self.matrix.capacity)))[0]
        return live
