"""Snapshots of the gallery's HNSW index, when they are due.

`matcher.snapshot` holds the file format (atomic, checksummed); this module
decides when to write one: after `snapshot_every_changes` durable changes,
or `snapshot_interval_s` after the last snapshot when anything changed. The
changes since the last snapshot are the store's sequence numbers after it
(one per label added or removed). Once written, the change log and the
expired idempotency keys before the oldest kept snapshot are pruned.
"""

from __future__ import annotations

import time
from pathlib import Path

import structlog

from matcher.gallery.memory import ShardMemory
from matcher.snapshot import read_manifest, snapshots, write_snapshot
from matcher.store import Store
from tunggal.settings import NodeSettings

_log = structlog.get_logger("matcher.gallery")


class Snapshots:
    """When and how one gallery's index is snapshotted."""

    def __init__(
        self,
        settings: NodeSettings,
        store: Store,
        memory: ShardMemory,
        directory: Path,
        seq: int,
    ) -> None:
        self._settings = settings
        self._store = store
        self._memory = memory
        self.directory = directory
        self.seq = seq
        """The store sequence number the newest snapshot (or the loaded index) is at."""
        self._written_at = time.monotonic()

    def due(self) -> bool:
        """Whether enough changed, or enough time passed with changes, to snapshot."""
        changes = self._store.last_seq() - self.seq
        if changes <= 0:
            return False
        return changes >= self._settings.snapshot_every_changes or (
            time.monotonic() - self._written_at >= self._settings.snapshot_interval_s
        )

    def write(self) -> tuple[int, Path | None]:
        """Write a snapshot of the index now; (seq, path), path None when the newest
        snapshot is already at seq. Callers hold off writes meanwhile (the gallery's
        write mutex); searches go on."""
        seq = self._store.last_seq()
        if seq == self.seq and any(True for _ in snapshots(self.directory)):
            return seq, None
        settings = self._settings
        memory = self._memory
        path = write_snapshot(
            self.directory,
            memory.index,
            {
                "seq": seq,
                "dim": settings.dim,
                "m": settings.hnsw_m,
                "ef_construction": settings.ef_construction,
                "capacity": memory.matrix.capacity,
                "count": memory.alive,
            },
            keep=settings.snapshots_kept,
        )
        self.seq = seq
        self._written_at = time.monotonic()
        kept = [read_manifest(p) for p in snapshots(self.directory)]
        oldest = min((m.seq for m in kept if m is not None), default=0)
        self._store.prune(oldest, time.time() - settings.request_ttl_s)
        _log.info("snapshot_written", path=str(path), seq=seq, templates=memory.alive)
        return seq, path
