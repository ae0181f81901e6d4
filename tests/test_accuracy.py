"""1:N accuracy metrics on hand-made cases, and `tunggal accuracy` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from matcher.accuracy import (
    det_curve,
    evaluate,
    fnir,
    fpir,
    mate_hits,
    nonmated_needed,
    operating_point,
    rank1_hit_rate,
    threshold_at_fpir,
)
from tunggal_tools.cli import main as cli_main

NONMATED = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
# Mated: four hits (scores 0.9, 0.8, 0.6, 0.3), one miss at rank 1 (someone else, 0.99).
TRUTH = ["a", "b", "c", "d", "e"]
TOP: list[str | None] = ["a", "b", "x", "d", "e"]
MATED = np.array([0.9, 0.8, 0.99, 0.6, 0.3])


def test_rank1_and_hits() -> None:
    hits = mate_hits(TRUTH, TOP)
    assert hits.tolist() == [True, True, False, True, True]
    assert rank1_hit_rate(hits) == 0.8
    assert mate_hits(["a", "b"], [None, "b"]).tolist() == [False, True]
    assert math.isnan(rank1_hit_rate([]))
    with pytest.raises(ValueError, match="1 true subjects but 2 results"):
        mate_hits(["a"], ["a", "b"])


def test_fpir_counts_nonmated_top_scores_at_or_above_threshold() -> None:
    assert fpir(NONMATED, 0.9) == 0.2  # 0.9 itself counts: >= T
    assert fpir(NONMATED, 0.91) == 0.1
    assert fpir(NONMATED, 0.0) == 1.0
    assert fpir(NONMATED, 1.0) == 0.0
    assert fpir([-np.inf, 0.5], 0.0) == 0.5  # an empty result never matches


def test_fnir_counts_misses_and_low_scoring_hits() -> None:
    hits = mate_hits(TRUTH, TOP)
    assert fnir(hits, MATED, -np.inf) == pytest.approx(0.2)  # only the rank-1 miss
    assert fnir(hits, MATED, 0.6) == pytest.approx(0.4)  # + the hit at 0.3
    assert fnir(hits, MATED, 0.85) == pytest.approx(0.8)  # only 0.9 survives
    # A non-mate at rank 1 never counts as found, however high it scores.
    assert fnir(hits, MATED, 0.95) == 1.0


def test_threshold_at_fpir_is_the_lowest_meeting_the_target() -> None:
    t = threshold_at_fpir(NONMATED, 0.1)  # one false positive of ten allowed
    assert 0.9 < t <= 0.95 and fpir(NONMATED, t) == 0.1
    assert fpir(NONMATED, np.nextafter(0.9, -np.inf)) == 0.2  # any lower breaks it
    t = threshold_at_fpir(NONMATED, 0.05)  # none allowed
    assert t > 0.95 and fpir(NONMATED, t) == 0.0
    assert threshold_at_fpir(NONMATED, 1.0) == -np.inf
    # Ties: 3 of 4 at the same score, target 0.5 -> all three must fall below T.
    tied = [0.7, 0.7, 0.7, 0.1]
    t = threshold_at_fpir(tied, 0.5)
    assert t > 0.7 and fpir(tied, t) == 0.0
    with pytest.raises(ValueError, match="no non-mated scores"):
        threshold_at_fpir([], 0.1)


def test_operating_point_and_the_ten_errors_rule() -> None:
    hits = mate_hits(TRUTH, TOP)
    point = operating_point(hits, MATED, NONMATED, 0.2)  # two of ten: T just above 0.8
    assert point.fpir == 0.2 and point.fnir == pytest.approx(0.8)
    assert 0.8 < point.threshold < 0.81
    assert point.needed == 50 and not point.enough
    assert nonmated_needed(1e-2) == 1000
    assert nonmated_needed(1e-3) == 10_000
    assert nonmated_needed(1e-4) == 100_000
    many = np.linspace(0, 1, 1000)
    assert operating_point(hits, MATED, many, 1e-2).enough


def test_det_curve_is_every_threshold() -> None:
    hits = mate_hits(TRUTH, TOP)
    det = det_curve(hits, MATED, NONMATED)
    assert np.all(np.diff(det.thresholds) > 0) and det.thresholds[-1] == np.inf
    assert np.all(np.diff(det.fpir) <= 0) and np.all(np.diff(det.fnir) >= 0)
    for t, fp, fn in zip(det.thresholds, det.fpir, det.fnir, strict=True):
        assert fp == fpir(NONMATED, t)
        assert fn == pytest.approx(fnir(hits, MATED, t))
    assert (det.fpir[0], det.fnir[0]) == (1.0, pytest.approx(0.2))  # T = lowest score
    assert (det.fpir[-1], det.fnir[-1]) == (0.0, 1.0)


def test_evaluate_bundles_everything() -> None:
    acc = evaluate(TRUTH, TOP, MATED, NONMATED, targets=(0.1, 0.2))
    assert (acc.mated, acc.nonmated, acc.rank1) == (5, 10, 0.8)
    assert [p.target for p in acc.points] == [0.1, 0.2]
    assert acc.points[0].fnir == pytest.approx(1.0)  # T above 0.9: no hit reaches it
    assert acc.points[1].fnir == pytest.approx(0.8)


@pytest.mark.timeout(120)
def test_accuracy_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png, report = tmp_path / "det.png", tmp_path / "acc.json"
    argv = ["accuracy", "--subjects", "3000", "--mated", "300", "--nonmated", "1000"]
    with pytest.raises(SystemExit) as done:
        cli_main([*argv, "--seed", "3", "--out", str(png), "--json", str(report)])
    assert done.value.code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "FPIR 1e-02" in out and "too few (need 10,000)" in out
    data = json.loads(report.read_text())
    exact, hnsw = data["methods"]["exact"], data["methods"][f"HNSW ef={data['calibration']['ef']}"]
    assert exact["mated"] == 300 and exact["nonmated"] == 1000
    assert exact["rank1"] == 1.0
    assert hnsw["rank1"] >= 0.99
    first = exact["operating_points"][0]
    assert first["target_fpir"] == 0.01 and first["enough_nonmated"] and first["fpir"] <= 0.01
    assert not exact["operating_points"][2]["enough_nonmated"]
