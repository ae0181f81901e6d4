"""Reads: HNSW or exact candidates, merged per subject; Verify.

Every read holds the memory's lock shared (reads run in parallel). HNSW
(or exact) candidates come with their exact scores and are aggregated per
subject. hnswlib scores each candidate it returns with the full float32
inner product of the stored vectors, so its scores are exact (to float32
rounding) and need no second pass.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import hnswlib
import numpy as np

from matcher.gallery.memory import ShardMemory
from matcher.gallery.values import FloatMatrix, Labels, Match, SearchQuery
from matcher.matrix import SearchMatrix
from tunggal.errors import NotFound
from tunggal.settings import NodeSettings
from tunggal.templates import in_escalation_band

_EXACT_TOP1_CHUNK = 1000
"""Probes per exact-search call of a rank-1 batch (the exact engine's working memory)."""


def exact_top1_chunks(
    matrix: SearchMatrix, probes: FloatMatrix
) -> Iterator[tuple[Labels, FloatMatrix]]:
    """Exact rank-1 (label, score) of `probes`, one chunk at a time; the caller
    holds the lock shared (and may stop between chunks)."""
    for lo in range(0, len(probes), _EXACT_TOP1_CHUNK):
        labels, scores = matrix.search(probes[lo : lo + _EXACT_TOP1_CHUNK], 1)
        yield labels[:, 0], scores[:, 0]


def knn(
    index: hnswlib.Index, probes: FloatMatrix, k: int, threads: int
) -> tuple[Labels, FloatMatrix]:
    """HNSW labels (n, k') for `probes`, k' <= k when too few are reachable, and their
    cosine scores, best first. hnswlib's cosine distance is 1 - the float32 inner
    product of the normalised vectors, computed in full for every returned label.

    hnswlib searches with a beam of max(index ef, k): asking for k = ef
    candidates sets the beam per query, so calibration can try other widths
    without touching live searches."""
    while True:
        try:
            found, distances = index.knn_query(probes, k=k, num_threads=threads)
        except RuntimeError:
            # Fewer reachable live elements than asked (many deletions).
            if k <= 1:
                return (
                    np.zeros((len(probes), 0), dtype=np.int64),
                    np.zeros((len(probes), 0), dtype=np.float32),
                )
            k //= 2
            continue
        labels: Labels = np.asarray(found, dtype=np.int64)
        scores: FloatMatrix = 1.0 - np.asarray(distances, dtype=np.float32)
        return labels, scores


class Search:
    """Identify searches and Verify over one gallery's memory."""

    def __init__(self, settings: NodeSettings, memory: ShardMemory) -> None:
        self._settings = settings
        self._memory = memory
        self.escalations = 0
        """Searches re-checked by exact search because HNSW's answer was ambiguous."""
        self._threads = settings.search_threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="hnsw")

    def close(self) -> None:
        """Stop the search threads (after the searches under way)."""
        self._pool.shutdown(wait=True)

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
                with self._memory.lock.shared():
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
                self.escalations += 1
                matches = self._search(dataclasses.replace(query, exact=True))
            out.append(matches)
        return out

    def _ambiguous(self, best: float | None) -> bool:
        return in_escalation_band(
            best, self._settings.verify_threshold, self._settings.escalate_band
        )

    def _hnsw_batch(self, queries: Sequence[SearchQuery]) -> list[list[Match] | None]:
        """Under the shared lock: one hnswlib batch; None where it found too few subjects."""
        alive = self._memory.alive
        if alive <= 0:
            return [[] for _ in queries]
        fetches = [min(alive, q.k * self._settings.fetch_factor) for q in queries]
        beam = min(alive, max(*fetches, self._memory.ef))
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
        alive = self._memory.alive
        if alive <= 0:
            return [[] for _ in queries]
        fetches = [min(alive, q.k * self._settings.fetch_factor) for q in queries]
        probes = np.stack([q.probe for q in queries])
        floors = [q.min_score for q in queries]
        found, all_scores = self._memory.matrix.search(probes, max(fetches), floors)
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
        with self._memory.lock.shared():
            alive = self._memory.alive
            if alive <= 0:
                return []
            fetch = min(alive, query.k * self._settings.fetch_factor)
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
            labels, scores = self._memory.matrix.search(probe[None, :], fetch, [query.min_score])
            keep = labels[0] >= 0
            return labels[0][keep], scores[0][keep]
        beam = min(self._memory.alive, max(fetch, self._memory.ef))
        found, scores = self._knn(probe[None, :], beam, 1)
        return found[0][:fetch], scores[0][:fetch]

    def _knn_parallel(self, probes: FloatMatrix, k: int) -> tuple[Labels, FloatMatrix]:
        """`_knn` of a batch spread over the search threads, whatever its size.

        hnswlib runs a batch of up to 4 x num_threads queries on one thread, so
        a node's SearchBatch would use one core however many it has; the
        batch is cut into one part per thread instead (hnswlib releases the
        GIL while it searches), the calling thread searching the last part.
        The caller holds the shared lock throughout.
        """
        parts = min(self._threads, len(probes))
        if parts <= 1:
            return self._knn(probes, k, 1)
        *others, mine = np.array_split(probes, parts)
        futures = [self._pool.submit(self._knn, chunk, k, 1) for chunk in others]
        last = self._knn(mine, k, 1)  # this thread searches a part too: one hand-off fewer
        results = [f.result() for f in futures] + [last]
        width = min(labels.shape[1] for labels, _ in results)  # _knn may have asked fewer
        return (
            np.concatenate([labels[:, :width] for labels, _ in results]),
            np.concatenate([scores[:, :width] for _, scores in results]),
        )

    def _knn(self, probes: FloatMatrix, k: int, threads: int) -> tuple[Labels, FloatMatrix]:
        return knn(self._memory.index, probes, k, threads)

    def _aggregate(
        self, labels: Labels, scores: FloatMatrix, min_score: float, k: int
    ) -> list[Match]:
        """The top-k subjects (best template each) among candidates sorted best first.

        Both engines return candidates best first, so a subject's first row is
        its best and the walk stops at the first score under `min_score`, or
        under the k-th subject's score once k are found (rows tied with it are
        kept, so the (score, subject_id) order stays exact)."""
        best: dict[str, float] = {}
        owner_of = self._memory.owners.get
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
        memory = self._memory
        with memory.lock.shared():
            for labels, scores in exact_top1_chunks(memory.matrix, probes):
                for label, score in zip(labels.tolist(), scores.tolist(), strict=True):
                    owner = memory.owners.get(label) if label >= 0 else None
                    out.append((owner, score if owner is not None else -np.inf))
        return out

    def verify(self, subject_id: str, probe: FloatMatrix) -> tuple[float, int]:
        """(best score, templates compared) of a probe against one subject.

        The subject's labels and rows are read in one shared section, from
        memory: a write in progress (store committed, memory not yet
        published) leaves the subject as it was, never missing."""
        memory = self._memory
        with memory.lock.shared():
            labels = memory.owners.labels_of(subject_id)
            if len(labels) == 0:
                raise NotFound(f"subject {subject_id!r} is not enrolled")
            scores = memory.matrix.rows(labels) @ probe
        return float(scores.max()), len(labels)
