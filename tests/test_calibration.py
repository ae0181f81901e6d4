"""Self-calibrating HNSW: the chosen ef meets its target against exact search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from matcher.calibration import choose_ef, genuine_noise, make_probes
from matcher.gallery import EnrollItem, Gallery
from tunggal.settings import NodeSettings
from tunggal.synthetic import FaceModel, subject_id


def test_probe_noise_matches_the_genuine_score() -> None:
    rng = np.random.default_rng(0)
    templates = FaceModel(dim=128).samples(range(2000), 0)
    probes = make_probes(templates, 0.68, rng)
    cos = (probes * templates).sum(axis=1)
    assert abs(float(cos.mean()) - 0.68) < 0.01
    assert genuine_noise(512, 0.68) < genuine_noise(128, 0.68)


def test_choose_ef_picks_the_smallest_width_meeting_the_target() -> None:
    sources = [f"s{i}" for i in range(1000)]
    exact = list(sources)
    exact[0] = "other"  # exact search misses one: not held against HNSW

    def hnsw(ef: int) -> list[str]:
        misses = {16: 50, 32: 5, 64: 1, 128: 0}[ef]
        return ["x"] * misses + sources[misses:]

    result = choose_ef(sources, exact, hnsw, [128, 16, 64, 32], 0.999, 1000)
    assert (result.ef, result.met, result.exact_hits, result.hnsw_hits) == (64, True, 999, 999)
    assert result.table == {16: 950, 32: 995, 64: 999}
    unmet = choose_ef(sources, exact, lambda ef: ["x"] * 1000, [16, 32], 0.999, 1000)
    assert not unmet.met and unmet.ef == 32 and unmet.hit_rate == 0.0


@pytest.mark.timeout(900)
@pytest.mark.parametrize("structure", [0.0, 0.7], ids=["isotropic", "structured"])
def test_calibration_meets_target_on_100k(tmp_path: Path, structure: float) -> None:
    n = 100_000
    model = FaceModel(dim=128, structure=structure)
    gallery = Gallery(NodeSettings(data_dir=tmp_path / "g", initial_capacity=n))
    templates = model.samples(range(n), 0)
    for lo in range(0, n, 10_000):
        gallery.enroll(
            [EnrollItem(subject_id(i), templates[i : i + 1], False) for i in range(lo, lo + 10_000)]
        )
    result = gallery.calibrate(seed=3)
    assert result.met and result.hit_rate >= 0.999 and result.probes == 5000
    assert gallery.ef == result.ef and gallery.stats()["calibration_met"]
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
