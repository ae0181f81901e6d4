"""One shard's gallery: durable store + HNSW index + exact matrix.

Write path (serialised by `_write_mutex`): validate, allocate labels, commit
to the store (fsynced), then make the change visible in memory: HNSW insert,
then a short exclusive section that publishes rows and owners. Deletes and
replaced templates are hidden under that same exclusive section, so once a
Delete returns no search can return the subject.

Read path (shared lock, parallel): HNSW (or exact) candidates with their
exact scores, per-subject aggregation. hnswlib scores each candidate it
returns with the full float32 inner product of the stored vectors, so its
scores are exact (to float32 rounding) and need no second pass.

Labels are row numbers of the matrix and HNSW labels; freed labels are
reused (hnswlib un-deletes and overwrites a re-added deleted label in place).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np
import numpy.typing as npt
import structlog

from matcher.calibration import DEFAULT_GRID, Calibration, choose_ef, make_probes
from matcher.exact import ExactMatrix
from matcher.memtrim import release_free_memory
from matcher.owners import OwnerTable
from matcher.quantized import QuantizedMatrix
from matcher.rwlock import RWLock
from matcher.snapshot import read_manifest, remove_leftovers, snapshots, write_snapshot
from matcher.store import EnrollOp, Store
from tunggal.errors import FailedPrecondition, NotFound
from tunggal.settings import NodeSettings
from tunggal.templates import in_escalation_band

FloatMatrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]

_log = structlog.get_logger("matcher.gallery")
_BUILD_CHUNK = 20_000
_INDEX_EF_FLOOR = 10  # the beam is set per query through k (see _candidates)
_CALIBRATION_CHUNK = 100


@dataclass(frozen=True)
class EnrollItem:
    """A validated enrollment request (vectors normalised)."""

    subject_id: str
    vectors: FloatMatrix
    replace: bool
    request_id: str = ""

    def fingerprint(self) -> bytes:
        """Digest of the request's content, to detect a reused request_id."""
        digest = hashlib.sha256()
        digest.update(self.subject_id.encode())
        digest.update(b"R" if self.replace else b"A")
        digest.update(np.ascontiguousarray(self.vectors, dtype="<f4").tobytes())
        return digest.digest()


@dataclass(frozen=True)
class EnrollResult:
    """Outcome of one enrollment."""

    subject_id: str
    template_count: int
    replayed: bool = False


@dataclass(frozen=True)
class SearchQuery:
    """One search: a normalised probe, how many subjects, the score floor, exact or HNSW."""

    probe: FloatMatrix
    k: int
    min_score: float
    exact: bool
    escalate: bool = True  # re-check exactly when the HNSW answer is ambiguous


@dataclass(frozen=True)
class Match:
    """A subject and its best exact score."""

    subject_id: str
    score: float


class Gallery:
    """The templates of one shard, searchable and durable."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.dim = settings.dim
        self.data_dir = Path(settings.data_dir)
        self.snapshot_dir = self.data_dir / "snapshots"
        self._rw = RWLock()
        self._write_mutex = threading.Lock()
        self._store = Store(self.data_dir / "gallery.sqlite", self.dim)
        self._owners = OwnerTable(0)
        self._free: deque[int] = deque()
        self._next_label = 0
        self._alive = 0
        self._snapshot_seq = 0
        self._changes_since_snapshot = 0
        self._last_snapshot_time = time.monotonic()
        self._ef = settings.ef_search
        self._calibration: Calibration | None = None
        self._escalations = 0
        self._index: hnswlib.Index
        self._matrix: ExactMatrix | QuantizedMatrix
        self._search_threads = settings.search_threads or os.cpu_count() or 1
        self._search_pool = ThreadPoolExecutor(self._search_threads, thread_name_prefix="hnsw")
        self._load()
        self._restore_calibration()

    # ---- start-up ----------------------------------------------------------

    def _new_index(self, capacity: int) -> hnswlib.Index:
        index = hnswlib.Index(space="cosine", dim=self.dim)
        index.init_index(
            max_elements=capacity,
            ef_construction=self.settings.ef_construction,
            M=self.settings.hnsw_m,
            allow_replace_deleted=False,
        )
        return index

    def _load(self) -> None:
        started = time.monotonic()
        remove_leftovers(self.snapshot_dir)
        last_seq = self._store.last_seq()
        pruned = int(self._store.get_meta("pruned_through") or 0)
        # 1. How many slots the stored labels need.
        high = self._store.label_bound()
        capacity = max(self.settings.initial_capacity, _grown(high))
        # 2. The newest good snapshot that the change log can bring up to date.
        index = None
        for path in snapshots(self.snapshot_dir):
            manifest = read_manifest(path)
            if manifest is None or manifest.dim != self.dim:
                continue
            if manifest.seq > last_seq or manifest.seq < pruned:
                _log.warning("snapshot_not_replayable", path=str(path), seq=manifest.seq)
                continue
            capacity = max(capacity, manifest.capacity)
            index = hnswlib.Index(space="cosine", dim=self.dim)
            index.load_index(str(path / "index.bin"), max_elements=capacity)
            self._snapshot_seq = manifest.seq
            _log.info("snapshot_loaded", path=str(path), seq=manifest.seq)
            break
        # 3. The truth: every stored template, streamed into the matrix and
        # owner list (one chunk in memory at a time).
        self._matrix = self._new_matrix(capacity)
        self._owners = OwnerTable(capacity)
        live = np.zeros(capacity, dtype=bool)
        for labels, subjects, vectors in self._store.iter_templates():
            self._matrix.set_rows(labels, vectors)
            live[labels] = True
            self._owners.assign(labels, subjects)
        stored = np.nonzero(live)[0]
        self._alive = len(stored)
        if index is None:
            index = self._rebuild(stored, capacity)
        else:
            self._replay(index, self._store.changed_labels_since(self._snapshot_seq))
            in_index = np.zeros(capacity, dtype=bool)
            in_index[np.asarray(index.get_ids_list(), dtype=np.int64)] = True
            if not in_index[stored].all():
                _log.warning("snapshot_inconsistent_rebuilding")
                index = self._rebuild(stored, capacity)
        index.set_ef(_INDEX_EF_FLOOR)
        self._index = index
        self._next_label = high
        self._free = deque(np.nonzero(~live[:high])[0].tolist())
        self._changes_since_snapshot = max(0, last_seq - self._snapshot_seq)
        release_free_memory()  # the load's chunks and the snapshot file's buffers
        _log.info(
            "gallery_loaded",
            templates=self._alive,
            capacity=capacity,
            seq=last_seq,
            snapshot_seq=self._snapshot_seq,
            seconds=round(time.monotonic() - started, 3),
        )

    def _new_matrix(self, capacity: int) -> ExactMatrix | QuantizedMatrix:
        """The exact-search matrix in the configured storage type."""
        if self.settings.exact_dtype == "int8":
            return QuantizedMatrix(self.dim, capacity, truth=self._index_rows)
        return ExactMatrix(self.dim, capacity, dtype=self.settings.exact_dtype)

    def _index_rows(self, labels: Labels) -> FloatMatrix:
        """The float32 (normalised) vectors hnswlib stores for live `labels`: the int8
        matrix's exact scores come from here, as hnswlib's own do. A label the index
        cannot return (it would be a bug) is read from the store, the truth."""
        try:
            rows: FloatMatrix = np.asarray(self._index.get_items(labels), dtype=np.float32)
        except RuntimeError as exc:  # hnswlib: "Label not found"
            _log.error("index_rows_missing", labels=len(labels), error=str(exc))
            rows = self._store.vectors(labels)
        return rows

    def _rebuild(self, labels: Labels, capacity: int) -> hnswlib.Index:
        """A new HNSW index over the stored templates at `labels`.

        Vectors come from the store (float32, the truth), never from the
        matrix, whose rows may be rounded (float16) or quantised (int8)."""
        _log.info("index_rebuild", templates=len(labels))
        index = self._new_index(capacity)
        for start in range(0, len(labels), _BUILD_CHUNK):
            chunk = labels[start : start + _BUILD_CHUNK]
            index.add_items(
                self._store.vectors(chunk), chunk, num_threads=self.settings.index_threads
            )
        self._snapshot_seq = 0
        return index

    def _replay(self, index: hnswlib.Index, touched: Labels) -> None:
        """Bring a snapshot's index up to date with the store for `touched` labels."""
        in_index = set(index.get_ids_list())
        held = self._owners.held(touched)
        adds = touched[held]
        if len(adds):
            index.add_items(
                self._store.vectors(adds), adds, num_threads=self.settings.index_threads
            )
        for label in touched[~held].tolist():
            if label in in_index:
                with contextlib.suppress(RuntimeError):  # already deleted in the snapshot
                    index.mark_deleted(label)
        _log.info("log_replayed", labels=len(touched), upserts=len(adds))

    # ---- writes ------------------------------------------------------------

    def enroll(self, items: Sequence[EnrollItem]) -> list[EnrollResult | Exception]:
        """Enroll several subjects durably; one result (or error) per item."""
        results: list[EnrollResult | Exception | None] = [None] * len(items)
        with self._write_mutex:
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
                    results[pos] = EnrollResult(done.subject_id, done.template_count)
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
        removed = np.concatenate([c.removed for c in committed])
        with self._rw.shared():
            self._index.add_items(vectors, added, num_threads=self.settings.index_threads)
        with self._rw.exclusive():
            self._matrix.set_rows(added, vectors)
            for op in ops:
                self._owners.set(op.labels, op.subject_id)
            self._hide(removed)
        self._alive += len(added) - len(removed)
        self._forget(removed)
        self._changes_since_snapshot += len(added) + len(removed)
        return [EnrollResult(c.subject_id, c.template_count) for c in committed]

    def delete(self, subject_id: str) -> int:
        """Delete a subject durably; returns how many templates it had."""
        with self._write_mutex:
            removed = self._store.delete_subject(subject_id)
            if len(removed) == 0:
                return 0
            with self._rw.exclusive():
                self._hide(removed)
            self._alive -= len(removed)
            self._forget(removed)
            self._changes_since_snapshot += len(removed)
            return len(removed)

    def _hide(self, labels: Labels) -> None:
        """Under the exclusive lock: make labels invisible to searches."""
        if len(labels):
            self._matrix.clear_rows(labels)
            self._owners.clear(labels)

    def _forget(self, labels: Labels) -> None:
        """Drop hidden labels from HNSW and make them reusable."""
        for label in labels.tolist():
            self._index.mark_deleted(label)
        self._free.extend(labels.tolist())

    def _allocate(self, n: int) -> Labels:
        out: list[int] = []
        while self._free and len(out) < n:
            out.append(self._free.popleft())
        while len(out) < n:
            out.append(self._next_label)
            self._next_label += 1
        if self._next_label > self._matrix.capacity:
            self._grow(_grown(self._next_label))
        return np.array(out, dtype=np.int64)

    def _grow(self, capacity: int) -> None:
        with self._rw.exclusive():
            self._index.resize_index(capacity)
            self._matrix.grow(capacity)
            self._owners.grow(capacity)
        release_free_memory()  # the index's and matrix's previous buffers
        _log.info("gallery_grown", capacity=capacity)

    # ---- reads -------------------------------------------------------------

    def search(self, probe: FloatMatrix, k: int, min_score: float, exact: bool) -> list[Match]:
        """Top-k subjects for one normalised probe, best first (see `search_many`)."""
        return self.search_many([SearchQuery(probe, k, min_score, exact)])[0]

    def search_many(self, queries: Sequence[SearchQuery]) -> list[list[Match]]:
        """Top-k subjects for each query, best first, in query order.

        The HNSW queries go to hnswlib spread over the node's search threads
        (no GIL), scored exactly by hnswlib; the exact ones go to the exact
        engine as one batch. Candidates are merged per subject.
        A query whose candidates hold too few subjects is searched again
        deeper on its own. An HNSW answer whose best score lands in the
        ambiguity band just below the verify threshold is re-checked by
        exact search: that is where a missed mate would hide.
        """
        results: list[list[Match] | None] = [None] * len(queries)
        for exact, batch in ((False, self._hnsw_batch), (True, self._exact_batch)):
            group = [i for i, q in enumerate(queries) if q.exact == exact]
            if group:
                with self._rw.shared():
                    answers = batch([queries[i] for i in group])
                for i, answer in zip(group, answers, strict=True):
                    results[i] = answer
        out: list[list[Match]] = []
        for query, result in zip(queries, results, strict=True):
            matches = result
            if matches is None:
                matches = self._search(query)
            best = matches[0].score if matches else None
            if not query.exact and query.escalate and self._ambiguous(best):
                self._escalations += 1
                matches = self._search(dataclasses.replace(query, exact=True))
            out.append(matches)
        return out

    def _ambiguous(self, best: float | None) -> bool:
        return in_escalation_band(best, self.settings.verify_threshold, self.settings.escalate_band)

    def _hnsw_batch(self, queries: Sequence[SearchQuery]) -> list[list[Match] | None]:
        """Under the shared lock: one hnswlib batch; None where it found too few subjects."""
        alive = self._alive
        if alive <= 0:
            return [[] for _ in queries]
        fetches = [min(alive, q.k * self.settings.fetch_factor) for q in queries]
        beam = min(alive, max(max(fetches), self._ef))
        probes = np.stack([q.probe for q in queries])
        found, all_scores = self._knn_parallel(probes, beam)
        if found.shape[1] == 0:
            return [None] * len(queries)
        out: list[list[Match] | None] = []
        for query, fetch, labels, scores in zip(queries, fetches, found, all_scores, strict=True):
            out.append(self._top(labels[:fetch], scores[:fetch], query, fetch >= alive))
        return out

    def _exact_batch(self, queries: Sequence[SearchQuery]) -> list[list[Match] | None]:
        """Under the shared lock: one exact-engine batch; None where too few subjects."""
        alive = self._alive
        if alive <= 0:
            return [[] for _ in queries]
        fetches = [min(alive, q.k * self.settings.fetch_factor) for q in queries]
        probes = np.stack([q.probe for q in queries])
        floors = [q.min_score for q in queries]
        found, all_scores = self._matrix.search(probes, max(fetches), floors)
        out: list[list[Match] | None] = []
        for query, fetch, labels, scores in zip(queries, fetches, found, all_scores, strict=True):
            keep = labels >= 0
            # Fewer than asked: no other live row scores at least min_score.
            complete = fetch >= alive or int(keep.sum()) < fetch
            out.append(self._top(labels[keep][:fetch], scores[keep][:fetch], query, complete))
        return out

    def _top(
        self, labels: Labels, scores: FloatMatrix, query: SearchQuery, complete: bool
    ) -> list[Match] | None:
        """The query's top-k subjects from its candidates, or None when a deeper
        fetch could still find more of them (`complete`: no other row can)."""
        matches = self._aggregate(labels, scores, query.min_score, query.k)
        done = (
            len(matches) >= query.k
            or complete
            or (scores.size > 0 and scores[-1] < query.min_score)
        )
        return matches[: query.k] if done else None

    def _search(self, query: SearchQuery) -> list[Match]:
        """One query, fetching deeper until `_top` is satisfied."""
        with self._rw.shared():
            alive = self._alive
            if alive <= 0:
                return []
            fetch = min(alive, query.k * self.settings.fetch_factor)
            while True:
                labels, scores = self._candidates(query, fetch)
                complete = fetch >= alive or (query.exact and len(labels) < fetch)
                matches = self._top(labels, scores, query, complete)
                if matches is not None:
                    return matches
                fetch = min(alive, fetch * 2)

    def _candidates(self, query: SearchQuery, fetch: int) -> tuple[Labels, FloatMatrix]:
        """Up to `fetch` candidates of one query, best first (exact: those >= min_score)."""
        probe = query.probe
        if query.exact:
            labels, scores = self._matrix.search(probe[None, :], fetch, [query.min_score])
            keep = labels[0] >= 0
            return labels[0][keep], scores[0][keep]
        # hnswlib searches with a beam of max(index ef, k): asking for
        # k = ef candidates sets the beam per query, so calibration can try
        # other widths without touching live searches.
        found, scores = self._knn(probe[None, :], min(self._alive, max(fetch, self._ef)), 1)
        return found[0][:fetch], scores[0][:fetch]

    def _knn_parallel(self, probes: FloatMatrix, k: int) -> tuple[Labels, FloatMatrix]:
        """`_knn` of a batch spread over the search threads, whatever its size.

        hnswlib runs a batch of up to 4 x num_threads queries on one thread, so
        a node's SearchBatch would use one core however many it has; the
        batch is cut into one part per thread instead (hnswlib releases the
        GIL while it searches), the calling thread searching the last part.
        The caller holds the shared lock throughout.
        """
        parts = min(self._search_threads, len(probes))
        if parts <= 1:
            return self._knn(probes, k, 1)
        *others, mine = np.array_split(probes, parts)
        futures = [self._search_pool.submit(self._knn, chunk, k, 1) for chunk in others]
        last = self._knn(mine, k, 1)  # this thread searches a part too: one hand-off fewer
        results = [f.result() for f in futures] + [last]
        width = min(labels.shape[1] for labels, _ in results)  # _knn may have asked fewer
        return (
            np.concatenate([labels[:, :width] for labels, _ in results]),
            np.concatenate([scores[:, :width] for _, scores in results]),
        )

    def _knn(self, probes: FloatMatrix, k: int, threads: int) -> tuple[Labels, FloatMatrix]:
        """HNSW labels (n, k') for `probes`, k' <= k when too few are reachable, and their
        cosine scores, best first. hnswlib's cosine distance is 1 - the float32 inner
        product of the normalised vectors, computed in full for every returned label."""
        while True:
            try:
                found, distances = self._index.knn_query(probes, k=k, num_threads=threads)
                labels: Labels = np.asarray(found, dtype=np.int64)
                scores: FloatMatrix = 1.0 - np.asarray(distances, dtype=np.float32)
                return labels, scores
            except RuntimeError:
                # Fewer reachable live elements than asked (many deletions).
                if k <= 1:
                    return (
                        np.zeros((len(probes), 0), dtype=np.int64),
                        np.zeros((len(probes), 0), dtype=np.float32),
                    )
                k //= 2

    def _aggregate(
        self, labels: Labels, scores: FloatMatrix, min_score: float, k: int
    ) -> list[Match]:
        """The top-k subjects (best template each) among candidates sorted best first.

        Both engines return candidates best first, so a subject's first row is
        its best and the walk stops at the first score under `min_score`, or
        under the k-th subject's score once k are found (rows tied with it are
        kept, so the (score, subject_id) order stays exact)."""
        best: dict[str, float] = {}
        owner_of = self._owners.get
        floor = -np.inf  # the k-th subject's score, once k are found
        for label, score in zip(labels.tolist(), scores.tolist(), strict=True):
            if score < min_score or score < floor:
                break
            owner = owner_of(label)
            if owner is None or owner in best:
                continue
            best[owner] = score
            if len(best) == k:
                floor = score
        ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))
        return [Match(s, v) for s, v in ranked[:k]]

    def exact_top1(self, probes: FloatMatrix) -> list[tuple[str | None, float]]:
        """Exact rank-1 (subject, score) of each probe, batched; (None, -inf) if empty."""
        out: list[tuple[str | None, float]] = []
        with self._rw.shared():
            for lo in range(0, len(probes), _CALIBRATION_CHUNK * 10):
                labels, scores = self._matrix.search(probes[lo : lo + _CALIBRATION_CHUNK * 10], 1)
                for label, score in zip(labels[:, 0].tolist(), scores[:, 0].tolist(), strict=True):
                    owner = self._owners.get(label) if label >= 0 else None
                    out.append((owner, score if owner is not None else -np.inf))
        return out

    def verify(self, subject_id: str, probe: FloatMatrix) -> tuple[float, int]:
        """(best score, templates compared) of a probe against one subject."""
        labels = self._store.labels_of(subject_id)
        with self._rw.shared():
            labels = np.array(
                [lb for lb in labels.tolist() if self._owners.get(lb) == subject_id],
                dtype=np.int64,
            )
            if len(labels) == 0:
                raise NotFound(f"subject {subject_id!r} is not enrolled")
            scores = self._matrix.rows(labels) @ probe
        return float(scores.max()), len(labels)

    def subject(self, subject_id: str) -> tuple[int, float, float]:
        """(template_count, created_at, updated_at) of a subject."""
        found = self._store.subject(subject_id)
        if found is None:
            raise NotFound(f"subject {subject_id!r} is not enrolled")
        return found

    # ---- maintenance -------------------------------------------------------

    def stats(self) -> dict[str, int | float | bool]:
        """Counts and positions for Stats and metrics."""
        subjects, templates = self._store.counts()
        cal = self._calibration
        return {
            "subjects": subjects,
            "templates": templates,
            "capacity": self._matrix.capacity,
            "ef_search": self._ef,
            "last_seq": self._store.last_seq(),
            "snapshot_seq": self._snapshot_seq,
            "index_bytes": int(self._index.index_file_size()),
            "matrix_bytes": self._matrix.nbytes,
            "escalations": self._escalations,
            "calibration_hit_rate": cal.hit_rate if cal else 0.0,
            "calibration_probes": cal.probes if cal else 0,
            "calibrated_templates": cal.templates if cal else 0,
            "calibration_met": cal.met if cal else False,
        }

    @property
    def live_templates(self) -> int:
        """Live templates, without touching the store (for every Search)."""
        return self._alive

    # ---- calibration -------------------------------------------------------

    def calibration_due(self) -> bool:
        """Whether the gallery is big enough and changed enough to re-calibrate."""
        if not self.settings.calibrate or self._alive < self.settings.calibration_min_templates:
            return False
        last = self._calibration
        if last is None:
            return True
        growth = self.settings.calibration_growth
        return self._alive >= last.templates * growth or self._alive * growth <= last.templates

    def calibrate(self, seed: int | None = None) -> Calibration:
        """Measure HNSW against exact search on probes from the gallery; adopt the ef.

        Live searches go on meanwhile (with the previous ef).
        """
        started = time.monotonic()
        rng = np.random.default_rng(seed)
        with self._rw.shared():
            live = np.nonzero(self._matrix.is_alive(np.arange(self._matrix.capacity)))[0]
            pick = rng.choice(
                live, size=min(self.settings.calibration_probes, len(live)), replace=False
            )
            sources = self._owners.names(pick)
            probes = make_probes(self._matrix.rows(pick), self.settings.calibration_genuine, rng)
            exact_labels, _ = self._matrix.search(probes, 1)
            exact_top = self._owners.names(exact_labels[:, 0])
            templates = self._alive

        def hnsw_top(ef: int) -> list[str]:
            top: list[str] = []
            with self._rw.shared():
                k = min(self._alive, ef)
                for lo in range(0, len(probes), _CALIBRATION_CHUNK):
                    chunk = probes[lo : lo + _CALIBRATION_CHUNK]
                    found, _ = self._knn(chunk, k, self.settings.index_threads)
                    best = found[:, 0] if found.shape[1] else np.full(len(chunk), -1)
                    top.extend(self._owners.names(best))
            return top

        result = choose_ef(
            sources, exact_top, hnsw_top, DEFAULT_GRID, self.settings.calibration_target, templates
        )
        self._adopt(result)
        self._store.set_meta("calibration", json.dumps(dataclasses.asdict(result)))
        log = _log.info if result.met else _log.warning
        log(
            "calibrated",
            ef=result.ef,
            hit_rate=round(result.hit_rate, 5),
            exact_hits=result.exact_hits,
            hnsw_hits=result.hnsw_hits,
            probes=result.probes,
            templates=templates,
            met=result.met,
            seconds=round(time.monotonic() - started, 2),
        )
        return result

    def _adopt(self, result: Calibration) -> None:
        self._ef = result.ef
        self._calibration = result

    def _restore_calibration(self) -> None:
        """Keep the last calibration across restarts (same ef, same answers)."""
        raw = self._store.get_meta("calibration")
        if raw and self.settings.calibrate:
            data = json.loads(raw)
            data["table"] = {int(k): v for k, v in data.get("table", {}).items()}
            self._adopt(Calibration(**data))

    @property
    def ef(self) -> int:
        """The HNSW beam width searches use now."""
        return self._ef

    def maintain(self) -> None:
        """Periodic work: snapshot and re-calibrate when due."""
        worked = False
        if self.snapshot_due():
            self.snapshot()
            worked = True
        if self.calibration_due():
            self.calibrate()
            worked = True
        if worked:
            release_free_memory()  # their temporary buffers

    def snapshot_due(self) -> bool:
        """Whether enough changed, or enough time passed with changes, to snapshot."""
        if self._changes_since_snapshot == 0:
            return False
        return self._changes_since_snapshot >= self.settings.snapshot_every_changes or (
            time.monotonic() - self._last_snapshot_time >= self.settings.snapshot_interval_s
        )

    def snapshot(self) -> tuple[int, Path | None]:
        """Write a snapshot of the index now (writers wait; searches go on)."""
        with self._write_mutex:
            seq = self._store.last_seq()
            if seq == self._snapshot_seq and any(True for _ in snapshots(self.snapshot_dir)):
                return seq, None
            path = write_snapshot(
                self.snapshot_dir,
                self._index,
                {
                    "seq": seq,
                    "dim": self.dim,
                    "m": self.settings.hnsw_m,
                    "ef_construction": self.settings.ef_construction,
                    "capacity": self._matrix.capacity,
                    "count": self._alive,
                },
                keep=self.settings.snapshots_kept,
            )
            self._snapshot_seq = seq
            self._changes_since_snapshot = 0
            self._last_snapshot_time = time.monotonic()
            kept = [read_manifest(p) for p in snapshots(self.snapshot_dir)]
            oldest = min((m.seq for m in kept if m is not None), default=0)
            self._store.prune(oldest, time.time() - self.settings.request_ttl_s)
            _log.info("snapshot_written", path=str(path), seq=seq, templates=self._alive)
            return seq, path

    def close(self, snapshot: bool = True) -> None:
        """Snapshot (optionally) and close the store."""
        if snapshot:
            self.snapshot()
        self._search_pool.shutdown(wait=True)
        self._store.close()

    @property
    def matrix_bytes(self) -> int:
        """Memory held by the exact matrix."""
        return self._matrix.nbytes


def _grown(needed: int) -> int:
    """Capacity to grow to so that `needed` slots fit (doubling, 1024 minimum)."""
    cap = 1024
    while cap < needed:
        cap *= 2
    return cap
