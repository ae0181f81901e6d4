"""Merge per-shard Identify answers into one global top-k."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence

from tunggal.v1 import tunggal_pb2 as pb


def merge_candidates(
    per_shard: Iterable[tuple[str, Sequence[pb.Candidate]]],
    k: int,
    min_score: float = -math.inf,
) -> list[pb.Candidate]:
    """The global top-`k` over every shard's candidates.

    `per_shard` holds (shard name, that shard's candidates). The answer has one
    row per subject (its best score; a subject seen on two shards, e.g. during
    a move, keeps the shard where it scored best), only scores >= `min_score`
    (NaN scores are dropped), sorted by score descending then subject_id, and
    every row's `shard` set to the shard that returned it. Pure: the inputs
    are not modified.
    """
    if k <= 0:
        return []
    best: dict[str, tuple[float, str]] = {}
    for shard, candidates in per_shard:
        for cand in candidates:
            score = float(cand.score)
            if math.isnan(score) or score < min_score:
                continue
            seen = best.get(cand.subject_id)
            if seen is None or score > seen[0] or (score == seen[0] and shard < seen[1]):
                best[cand.subject_id] = (score, shard)
    ranked = heapq.nsmallest(k, best.items(), key=lambda item: (-item[1][0], item[0]))
    return [
        pb.Candidate(subject_id=subject_id, score=score, shard=shard)
        for subject_id, (score, shard) in ranked
    ]
