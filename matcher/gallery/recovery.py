"""Start-up: the gallery's memory rebuilt from the store, with a snapshot's help.

The store (SQLite) is the truth. The newest good snapshot whose sequence
number the change log can bring up to date gives the HNSW index; the log's
tail since it is replayed into it. Without one, the index is rebuilt from
the stored float32 templates. The matrix and the owners are always streamed
from the store.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np
import structlog

from matcher.exact import ExactMatrix
from matcher.gallery.memory import IndexRows, ShardMemory, capacity_for
from matcher.gallery.values import Labels
from matcher.matrix import SearchMatrix
from matcher.memtrim import release_free_memory
from matcher.owners import OwnerTable
from matcher.quantized import QuantizedMatrix
from matcher.snapshot import read_manifest, remove_leftovers, snapshots
from matcher.store import Store
from tunggal.settings import NodeSettings

_log = structlog.get_logger("matcher.gallery")
_BUILD_CHUNK = 20_000
INDEX_EF_FLOOR = 10
"""The index's own ef: searches set their beam per query through k (see search.py)."""


@dataclass
class Recovered:
    """A loaded gallery: its memory, its free labels and where its snapshots stand."""

    memory: ShardMemory
    free: deque[int]
    """Labels below `next_label` that no template holds."""
    next_label: int
    snapshot_seq: int
    """The sequence number the loaded index was snapshotted at (0: rebuilt)."""


def new_index(settings: NodeSettings, capacity: int) -> hnswlib.Index:
    """An empty HNSW index with the configured graph parameters."""
    index = hnswlib.Index(space="cosine", dim=settings.dim)
    index.init_index(
        max_elements=capacity,
        ef_construction=settings.ef_construction,
        M=settings.hnsw_m,
        allow_replace_deleted=False,
    )
    return index


def new_matrix(settings: NodeSettings, capacity: int, rows: IndexRows) -> SearchMatrix:
    """The exact-search matrix in the configured storage type (int8 reads its
    exact rows from the index, through `rows`)."""
    if settings.exact_dtype == "int8":
        return QuantizedMatrix(settings.dim, capacity, truth=rows)
    return ExactMatrix(settings.dim, capacity, dtype=settings.exact_dtype)


def recover(settings: NodeSettings, store: Store, snapshot_dir: Path) -> Recovered:
    """Load the gallery from `store` and the snapshots in `snapshot_dir`."""
    started = time.monotonic()
    remove_leftovers(snapshot_dir)
    last_seq = store.last_seq()
    pruned = int(store.get_meta("pruned_through") or 0)
    # 1. How many slots the stored labels need.
    high = store.label_bound()
    capacity = max(settings.initial_capacity, capacity_for(high))
    # 2. The newest good snapshot that the change log can bring up to date.
    index = None
    snapshot_seq = 0
    for path in snapshots(snapshot_dir):
        manifest = read_manifest(path)
        if manifest is None or manifest.dim != settings.dim:
            continue
        if manifest.seq > last_seq or manifest.seq < pruned:
            _log.warning("snapshot_not_replayable", path=str(path), seq=manifest.seq)
            continue
        capacity = max(capacity, manifest.capacity)
        index = hnswlib.Index(space="cosine", dim=settings.dim)
        index.load_index(str(path / "index.bin"), max_elements=capacity)
        snapshot_seq = manifest.seq
        _log.info("snapshot_loaded", path=str(path), seq=manifest.seq)
        break
    # 3. The truth: every stored template, streamed into the matrix and
    # owner list (one chunk in memory at a time).
    rows = IndexRows(store)
    matrix = new_matrix(settings, capacity, rows)
    owners = OwnerTable(capacity)
    live = np.zeros(capacity, dtype=bool)
    for labels, subjects, vectors in store.iter_templates():
        matrix.set_rows(labels, vectors)
        live[labels] = True
        owners.assign(labels, subjects)
    stored = np.nonzero(live)[0]
    if index is None:
        index = _rebuild(settings, store, stored, capacity)
        snapshot_seq = 0
    else:
        _replay(settings, store, owners, index, store.changed_labels_since(snapshot_seq))
        in_index = np.zeros(capacity, dtype=bool)
        in_index[np.asarray(index.get_ids_list(), dtype=np.int64)] = True
        if not in_index[stored].all():
            _log.warning("snapshot_inconsistent_rebuilding")
            index = _rebuild(settings, store, stored, capacity)
            snapshot_seq = 0
    index.set_ef(INDEX_EF_FLOOR)
    rows.index = index
    memory = ShardMemory(index, matrix, owners, len(stored), settings.ef_search)
    release_free_memory()  # the load's chunks and the snapshot file's buffers
    _log.info(
        "gallery_loaded",
        templates=len(stored),
        capacity=capacity,
        seq=last_seq,
        snapshot_seq=snapshot_seq,
        seconds=round(time.monotonic() - started, 3),
    )
    free = deque(np.nonzero(~live[:high])[0].tolist())
    return Recovered(memory, free, high, snapshot_seq)


def _rebuild(settings: NodeSettings, store: Store, labels: Labels, capacity: int) -> hnswlib.Index:
    """A new HNSW index over the stored templates at `labels`.

    Vectors come from the store (float32, the truth), never from the
    matrix, whose rows may be rounded (float16) or quantised (int8)."""
    _log.info("index_rebuild", templates=len(labels))
    index = new_index(settings, capacity)
    for start in range(0, len(labels), _BUILD_CHUNK):
        chunk = labels[start : start + _BUILD_CHUNK]
        index.add_items(store.vectors(chunk), chunk, num_threads=settings.index_threads)
    return index


def _replay(
    settings: NodeSettings,
    store: Store,
    owners: OwnerTable,
    index: hnswlib.Index,
    touched: Labels,
) -> None:
    """Bring a snapshot's index up to date with the store for `touched` labels."""
    in_index = set(index.get_ids_list())
    held = owners.held(touched)
    adds = touched[held]
    if len(adds):
        index.add_items(store.vectors(adds), adds, num_threads=settings.index_threads)
    for label in touched[~held].tolist():
        if label in in_index:
            with contextlib.suppress(RuntimeError):  # already deleted in the snapshot
                index.mark_deleted(label)
    _log.info("log_replayed", labels=len(touched), upserts=len(adds))
