"""Writes: enroll and delete, durable first, then visible at once.

Each write validates, allocates labels, commits to the store (fsynced), then
makes the change visible in memory: HNSW insert (under the shared lock,
searches go on), then one short exclusive section that publishes rows and
owners and hides removed templates (`ShardMemory.publish`). So once a Delete
returns no search can return the subject, and Verify sees a REPLACE's old
templates or its new ones, never neither.

Labels are row numbers of the matrix and HNSW labels; freed labels are
reused (hnswlib un-deletes and overwrites a re-added deleted label in place).
Callers serialise writes (the gallery's write mutex).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from matcher.gallery.memory import ShardMemory, capacity_for
from matcher.gallery.values import EnrollItem, EnrollResult, Labels
from matcher.store import EnrollOp, Store
from tunggal.errors import FailedPrecondition
from tunggal.settings import NodeSettings


class Writes:
    """Enrollments and deletions of one gallery, and the labels they use."""

    def __init__(
        self,
        settings: NodeSettings,
        store: Store,
        memory: ShardMemory,
        free: deque[int],
        next_label: int,
    ) -> None:
        self._settings = settings
        self._store = store
        self._memory = memory
        self._free = free
        self._next_label = next_label

    def enroll(self, items: Sequence[EnrollItem]) -> list[EnrollResult | Exception]:
        """Enroll several subjects durably; one result (or error) per item."""
        results: list[EnrollResult | Exception | None] = [None] * len(items)
        ops: list[EnrollOp] = []
        op_pos: list[int] = []
        seen_ids: set[str] = set()
        for pos, item in enumerate(items):
            if item.request_id:
                stored = self._store.stored_request(item.request_id)
                if stored is not None:
                    if stored[0] != item.fingerprint():
                        results[pos] = FailedPrecondition(
                            f"request_id {item.request_id!r} was already used for a "
                            "different enrollment: use a new request_id"
                        )
                    else:
                        results[pos] = EnrollResult(item.subject_id, stored[1], replayed=True)
                    continue
                if item.request_id in seen_ids:
                    results[pos] = FailedPrecondition(
                        f"request_id {item.request_id!r} appears twice in one batch"
                    )
                    continue
                seen_ids.add(item.request_id)
            labels = self._allocate(len(item.vectors))
            ops.append(
                EnrollOp(
                    item.subject_id,
                    item.vectors,
                    labels,
                    item.replace,
                    item.request_id,
                    item.fingerprint(),
                )
            )
            op_pos.append(pos)
        if ops:
            committed = self._commit(ops)
            for pos, done in zip(op_pos, committed, strict=True):
                results[pos] = done
        return [r if r is not None else RuntimeError("no result") for r in results]

    def _commit(self, ops: list[EnrollOp]) -> list[EnrollResult]:
        try:
            committed = self._store.commit_enrolls(ops, time.time())
        except BaseException:
            for op in ops:
                self._free.extend(op.labels.tolist())
            raise
        added = np.concatenate([c.added for c in committed])
        vectors = np.concatenate([op.vectors for op in ops])
        owners = [op.subject_id for op in ops for _ in range(len(op.labels))]
        removed = np.concatenate([c.removed for c in committed])
        memory = self._memory
        with memory.lock.shared():
            memory.index.add_items(vectors, added, num_threads=self._settings.index_threads)
        memory.publish(added, vectors, owners, removed)
        self._forget(removed)
        return [EnrollResult(c.subject_id, c.template_count) for c in committed]

    def delete(self, subject_id: str) -> int:
        """Delete a subject durably; returns how many templates it had."""
        removed = self._store.delete_subject(subject_id)
        if len(removed) == 0:
            return 0
        self._memory.hide(removed)
        self._forget(removed)
        return len(removed)

    def _forget(self, labels: Labels) -> None:
        """Drop hidden labels from HNSW and make them reusable."""
        for label in labels.tolist():
            self._memory.index.mark_deleted(label)
        self._free.extend(labels.tolist())

    def _allocate(self, n: int) -> Labels:
        out: list[int] = []
        while self._free and len(out) < n:
            out.append(self._free.popleft())
        while len(out) < n:
            out.append(self._next_label)
            self._next_label += 1
        if self._next_label > self._memory.matrix.capacity:
            self._memory.grow(capacity_for(self._next_label))
        return np.array(out, dtype=np.int64)
