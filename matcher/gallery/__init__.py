"""One shard's gallery: durable store + HNSW index + exact matrix.

`Gallery` is the public face; each job has a module of its own:

- `memory`: what searches read (index, matrix, owners both ways) and the
  readers-writer lock that makes each write visible at once;
- `recovery`: start-up from the store, a snapshot and the change log's tail;
- `writes`: enroll and delete, durable before visible;
- `search`: Identify searches (HNSW or exact, merged per subject) and Verify;
- `calibration`: when to measure the HNSW beam width (ef), and doing it;
- `snapshots`: when to snapshot the index, and doing it;
- `values`: what goes in and out (EnrollItem, SearchQuery, Match, GalleryStats...).

Writes and snapshots take turns (one mutex); searches run in parallel with
both, on the shared side of the memory's lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from matcher.calibration import Calibration
from matcher.gallery.calibration import Calibrator
from matcher.gallery.recovery import recover
from matcher.gallery.search import Search
from matcher.gallery.snapshots import Snapshots
from matcher.gallery.values import (
    EnrollItem,
    EnrollResult,
    FloatMatrix,
    GalleryStats,
    Labels,
    Match,
    SearchQuery,
)
from matcher.gallery.writes import Writes
from matcher.memtrim import release_free_memory
from matcher.store import Store
from tunggal.errors import NotFound
from tunggal.settings import NodeSettings

__all__ = [
    "EnrollItem",
    "EnrollResult",
    "FloatMatrix",
    "Gallery",
    "GalleryStats",
    "Labels",
    "Match",
    "SearchQuery",
]


class Gallery:
    """The templates of one shard, searchable and durable."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.dim = settings.dim
        self.data_dir = Path(settings.data_dir)
        self._store = Store(self.data_dir / "gallery.sqlite", self.dim)
        recovered = recover(settings, self._store, self.data_dir / "snapshots")
        self._memory = recovered.memory
        self._write_mutex = threading.Lock()  # writes and snapshots take turns
        self._writes = Writes(
            settings, self._store, self._memory, recovered.free, recovered.next_label
        )
        self._search = Search(settings, self._memory)
        self._calibrator = Calibrator(settings, self._store, self._memory)
        self._snapshots = Snapshots(
            settings,
            self._store,
            self._memory,
            self.data_dir / "snapshots",
            recovered.snapshot_seq,
        )

    # ---- writes ------------------------------------------------------------

    def enroll(self, items: Sequence[EnrollItem]) -> list[EnrollResult | Exception]:
        """Enroll several subjects durably; one result (or error) per item."""
        with self._write_mutex:
            return self._writes.enroll(items)

    def delete(self, subject_id: str) -> int:
        """Delete a subject durably; returns how many templates it had."""
        with self._write_mutex:
            return self._writes.delete(subject_id)

    # ---- reads -------------------------------------------------------------

    def search(self, probe: FloatMatrix, k: int, min_score: float, exact: bool) -> list[Match]:
        """Top-k subjects for one normalised probe, best first (see `search_many`)."""
        return self._search.search_many([SearchQuery(probe, k, min_score, exact)])[0]

    def search_many(self, queries: Sequence[SearchQuery]) -> list[list[Match]]:
        """Top-k subjects for each query, best first, in query order
        (`matcher.gallery.search.Search.search_many`)."""
        return self._search.search_many(queries)

    def exact_top1(self, probes: FloatMatrix) -> list[tuple[str | None, float]]:
        """Exact rank-1 (subject, score) of each probe, batched; (None, -inf) if empty."""
        return self._search.exact_top1(probes)

    def verify(self, subject_id: str, probe: FloatMatrix) -> tuple[float, int]:
        """(best score, templates compared) of a probe against one subject."""
        return self._search.verify(subject_id, probe)

    def subject(self, subject_id: str) -> tuple[int, float, float]:
        """(template_count, created_at, updated_at) of a subject."""
        found = self._store.subject(subject_id)
        if found is None:
            raise NotFound(f"subject {subject_id!r} is not enrolled")
        return found

    @property
    def live_templates(self) -> int:
        """Live templates, without touching the store (for every Search)."""
        return self._memory.alive

    @property
    def ef(self) -> int:
        """The HNSW beam width searches use now."""
        return self._memory.ef

    @property
    def matrix_bytes(self) -> int:
        """Memory held by the exact matrix."""
        return self._memory.matrix.nbytes

    def stats(self) -> GalleryStats:
        """Counts and positions for Stats and metrics."""
        subjects, templates = self._store.counts()
        cal = self._calibrator.current
        return GalleryStats(
            subjects=subjects,
            templates=templates,
            capacity=self._memory.matrix.capacity,
            ef_search=self._memory.ef,
            last_seq=self._store.last_seq(),
            snapshot_seq=self._snapshots.seq,
            index_bytes=int(self._memory.index.index_file_size()),
            matrix_bytes=self._memory.matrix.nbytes,
            escalations=self._search.escalations,
            calibration_hit_rate=cal.hit_rate if cal else 0.0,
            calibration_probes=cal.probes if cal else 0,
            calibrated_templates=cal.templates if cal else 0,
            calibration_met=cal.met if cal else False,
            calibrated_at=cal.calibrated_at if cal else 0.0,
        )

    # ---- maintenance -------------------------------------------------------

    def calibration_due(self) -> bool:
        """Whether to re-calibrate now (`matcher.gallery.calibration`)."""
        return self._calibrator.due()

    def calibrate(
        self, seed: int | None = None, stop: threading.Event | None = None
    ) -> Calibration:
        """Measure HNSW against exact search on probes from the gallery; adopt the ef.

        Live searches go on meanwhile (with the previous ef); setting `stop`
        abandons it (CalibrationStopped) and keeps the previous ef.
        """
        return self._calibrator.calibrate(seed, stop)

    def snapshot_due(self) -> bool:
        """Whether enough changed, or enough time passed with changes, to snapshot."""
        return self._snapshots.due()

    def snapshot(self) -> tuple[int, Path | None]:
        """Write a snapshot of the index now (writers wait; searches go on)."""
        with self._write_mutex:
            return self._snapshots.write()

    def maintain(self, stop: threading.Event | None = None) -> None:
        """Periodic work: snapshot and re-calibrate when due (`stop` abandons a
        calibration, see `calibrate`)."""
        worked = False
        if self.snapshot_due():
            self.snapshot()
            worked = True
        if self.calibration_due():
            self.calibrate(stop=stop)
            worked = True
        if worked:
            release_free_memory()  # their temporary buffers

    def close(self, snapshot: bool = True) -> None:
        """Snapshot (optionally) and close the store."""
        if snapshot:
            self.snapshot()
        self._search.close()
        self._store.close()
