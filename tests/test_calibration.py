"""Self-calibrating HNSW: the chosen ef meets its target against exact search."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from matcher.calibration import (
    DEFAULT_GRID,
    choose_ef,
    genuine_noise,
    make_probes,
    refinements,
)
from matcher.gallery import EnrollItem, Gallery
from tunggal.settings import NodeSettings
from tunggal_tools.synthetic import FaceModel, subject_id


def test_probe_noise_matches_the_genuine_score() -> None:
    rng = np.random.default_rng(0)
    templates = FaceModel(dim=128).samples(range(2000), 0)
    probes = make_probes(templates, 0.68, rng)
    cos = (probes * templates).sum(axis=1)
    assert abs(float(cos.mean()) - 0.68) < 0.01
    assert genuine_noise(512, 0.68) < genuine_noise(128, 0.68)


def _misses_below(threshold: int, sources: list[str]) -> Callable[[int], list[str]]:
    """An HNSW stand-in that misses 10 mates at every ef below `threshold`, none from it on."""

    def hnsw(ef: int) -> list[str]:
        misses = 10 if ef < threshold else 0
        return ["x"] * misses + sources[misses:]

    return hnsw


def test_choose_ef_picks_the_smallest_width_meeting_the_target() -> None:
    sources = [f"s{i}" for i in range(1000)]
    exact = list(sources)
    exact[0] = "other"  # exact search misses one: not held against HNSW

    def hnsw(ef: int) -> list[str]:
        misses = {16: 50, 32: 5, 40: 3, 48: 2, 56: 1, 64: 1, 128: 0}[ef]
        return ["x"] * misses + sources[misses:]

    result = choose_ef(sources, exact, hnsw, [128, 16, 64, 32], 0.999, 1000)
    # 32 falls short and 64 meets it: 40, 48, 56 lie between; 56 is the first to meet it.
    assert (result.ef, result.met, result.exact_hits, result.hnsw_hits) == (56, True, 999, 999)
    assert result.table == {16: 950, 32: 995, 48: 998, 56: 999, 64: 999}
    assert list(result.table) == sorted(result.table)
    unmet = choose_ef(sources, exact, lambda _ef: ["x"] * 1000, [16, 32], 0.999, 1000)
    assert not unmet.met and unmet.ef == 32 and unmet.hit_rate == 0.0
    first = choose_ef(sources, exact, _misses_below(0, sources), [16, 32], 0.999, 1000)
    assert (first.ef, first.table) == (16, {16: 1000})  # nothing below the grid's first


@pytest.mark.parametrize("threshold", [257, 288, 300, 352, 353, 384])
def test_choose_ef_bisects_to_the_first_refinement_meeting_the_target(threshold: int) -> None:
    sources = [f"s{i}" for i in range(1000)]
    result = choose_ef(
        sources, sources, _misses_below(threshold, sources), DEFAULT_GRID, 0.999, 1000
    )
    between = refinements(256, 384)
    assert between == [288, 320, 352]
    expected = min([ef for ef in between if ef >= threshold] + [384])
    assert result.met and result.ef == expected
    # Binary search: at most 2 of the 3 widths between 256 and 384 are tried.
    assert len([ef for ef in result.table if 256 < ef < 384]) <= 2
    assert max(result.table) == 384


def test_refinements_step_by_an_eighth_of_the_short_width() -> None:
    assert refinements(384, 512) == [432, 480]
    assert refinements(128, 192) == [144, 160, 176]
    assert refinements(64, 96) == [72, 80, 88]
    assert refinements(16, 24) == []


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("structure", [0.0, 0.7], ids=["isotropic", "structured"])
def test_calibration_meets_target_on_100k(tmp_path: Path, structure: float) -> None:
    n = 100_000
    model = FaceModel(dim=128, structure=structure)
    # 5000 probes, not the default 20,000: the same mechanism at a quarter of the CI time.
    settings = NodeSettings(data_dir=tmp_path / "g", initial_capacity=n, calibration_probes=5000)
    gallery = Gallery(settings)
    templates = model.samples(range(n), 0)
    for lo in range(0, n, 10_000):
        gallery.enroll(
            [EnrollItem(subject_id(i), templates[i : i + 1], False) for i in range(lo, lo + 10_000)]
        )
    result = gallery.calibrate(seed=3)
    assert result.met and result.hit_rate >= 0.999 and result.probes == 5000
    assert gallery.ef == result.ef and gallery.stats().calibration_met
    # 5000 fresh mated probes (new captures, not the calibration's) at the chosen
    # ef. An ef chosen on too few probes fails this: on the isotropic gallery ef
    # 128, which 1000 probes can pass, misses about 17 of 5000.
    ids = np.arange(7, n, n // 5000)
    probes = model.samples(ids, 1)
    hnsw = sum(
        gallery.search(p, 1, -1.0, exact=False)[0].subject_id == subject_id(int(i))
        for p, i in zip(probes, ids, strict=True)
    )
    exact = sum(  # numpy oracle
        int(((probes[lo : lo + 500] @ templates.T).argmax(axis=1) == ids[lo : lo + 500]).sum())
        for lo in range(0, len(ids), 500)
    )
    assert exact == len(ids)  # exact search finds every mate
    assert hnsw >= 0.998 * exact
    gallery.close(snapshot=False)
