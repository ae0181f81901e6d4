"""Merging per-shard candidate lists into the global top-k."""

from __future__ import annotations

import math
import random

from gateway.merge import merge_candidates
from tunggal.v1 import tunggal_pb2 as pb


def cands(*rows: tuple[str, float]) -> list[pb.Candidate]:
    return [pb.Candidate(subject_id=s, score=score) for s, score in rows]


def rows(merged: list[pb.Candidate]) -> list[tuple[str, float, str]]:
    return [(c.subject_id, round(c.score, 4), c.shard) for c in merged]


def test_merges_sorts_and_cuts_to_k() -> None:
    merged = merge_candidates(
        [
            ("node-0", cands(("a", 0.9), ("b", 0.5), ("c", 0.1))),
            ("node-1", cands(("d", 0.8), ("e", 0.6))),
        ],
        k=3,
    )
    assert rows(merged) == [("a", 0.9, "node-0"), ("d", 0.8, "node-1"), ("e", 0.6, "node-1")]


def test_one_row_per_subject_with_its_best_score() -> None:
    merged = merge_candidates(
        [
            ("node-0", cands(("a", 0.4), ("a", 0.7), ("b", 0.5))),
            ("node-1", cands(("a", 0.6), ("b", 0.9))),
        ],
        k=10,
    )
    assert rows(merged) == [("b", 0.9, "node-1"), ("a", 0.7, "node-0")]


def test_ties_broken_by_subject_id() -> None:
    merged = merge_candidates(
        [("node-1", cands(("c", 0.5), ("a", 0.5))), ("node-0", cands(("b", 0.5)))], k=3
    )
    assert [c.subject_id for c in merged] == ["a", "b", "c"]


def test_same_score_on_two_shards_goes_to_the_smaller_shard_name() -> None:
    merged = merge_candidates([("node-1", cands(("a", 0.5))), ("node-0", cands(("a", 0.5)))], k=1)
    assert rows(merged) == [("a", 0.5, "node-0")]


def test_min_score_and_nan_are_dropped() -> None:
    merged = merge_candidates(
        [("n", cands(("a", 0.9), ("b", 0.2), ("c", math.nan), ("d", 0.3)))], k=10, min_score=0.3
    )
    assert [c.subject_id for c in merged] == ["a", "d"]


def test_empty_inputs_and_nonpositive_k() -> None:
    assert merge_candidates([], k=5) == []
    assert merge_candidates([("n", [])], k=5) == []
    assert merge_candidates([("n", cands(("a", 0.9)))], k=0) == []


def test_inputs_are_not_modified() -> None:
    shard0 = cands(("a", 0.9))
    shard0[0].shard = "stale"
    merged = merge_candidates([("node-0", shard0)], k=1)
    assert merged[0].shard == "node-0"
    assert shard0[0].shard == "stale"
    merged[0].score = 0.0
    assert shard0[0].score > 0.8


def test_matches_brute_force() -> None:
    rng = random.Random(7)
    per_shard = [
        (
            f"node-{shard}",
            cands(*((f"s{rng.randrange(200)}", rng.uniform(-1, 1)) for _ in range(50))),
        )
        for shard in range(4)
    ]
    merged = merge_candidates(per_shard, k=25)
    best: dict[str, float] = {}
    for _, cs in per_shard:
        for c in cs:
            best[c.subject_id] = max(best.get(c.subject_id, -2.0), c.score)
    expected = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:25]
    assert [(c.subject_id, c.score) for c in merged] == expected
