"""Synthetic face-like templates: their score distributions and reproducibility.

The figures asserted here are the ones tunggal_tools/synthetic.py documents and the
benchmarks rely on (genuine cosine about `genuine`, impostors centred on 0 and
wider with more structure).
"""

from __future__ import annotations

import numpy as np
import pytest

from tunggal_tools.synthetic import FaceModel, identity_of, subject_id


@pytest.mark.parametrize("dim", [128, 512])
@pytest.mark.parametrize("structure", [0.0, 0.7])
def test_genuine_and_impostor_scores(dim: int, structure: float) -> None:
    model = FaceModel(dim=dim, structure=structure)
    ids = np.arange(2000)
    first, second = model.samples(ids, 0), model.samples(ids, 1)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    genuine = (first * second).sum(axis=1)
    assert abs(float(genuine.mean()) - model.genuine) < 0.01
    impostor = (first[:1000] * second[1000:]).sum(axis=1)
    assert abs(float(impostor.mean())) < 0.01
    assert float(genuine.min()) > float(impostor.max())  # separable at this size
    # Two centres' cosine has variance s^2/rank + (1-s)^2/dim + 2s(1-s)/dim (the
    # low-rank parts, the isotropic parts, the cross terms); samples scale it
    # by genuine^2 and their noise adds (1 - genuine^2)/dim.
    g, s = model.genuine, structure
    centres = s**2 / model.rank + ((1 - s) ** 2 + 2 * s * (1 - s)) / dim
    expected_sd = np.sqrt(g**2 * centres + (1 - g**2) / dim)
    assert float(impostor.std()) == pytest.approx(expected_sd, rel=0.1)


def test_structure_widens_the_impostor_spread() -> None:
    ids = np.arange(1000)
    spreads = []
    for structure in (0.0, 0.4, 0.7, 0.9):
        model = FaceModel(dim=512, structure=structure)
        a, b = model.samples(ids, 0), model.samples(ids + 1000, 0)
        spreads.append(float((a * b).sum(axis=1).std()))
    assert spreads == sorted(spreads) and spreads[-1] > 1.5 * spreads[0]


def test_rows_depend_only_on_identity_capture_and_seed() -> None:
    model = FaceModel()
    whole = model.samples(np.arange(3000), 1)
    pieces = np.concatenate(
        [model.samples(np.arange(lo, lo + 500), 1) for lo in range(0, 3000, 500)]
    )
    np.testing.assert_array_equal(whole, pieces)
    picked = model.samples([2999, 5, 1024], 1)
    np.testing.assert_array_equal(picked, whole[[2999, 5, 1024]])
    assert not np.array_equal(model.samples([5], 0), model.samples([5], 1))
    assert not np.array_equal(FaceModel(seed=8).samples([5], 0), model.samples([5], 0))


def test_subject_ids_round_trip() -> None:
    for ident in (0, 7, 999_999_999_999):
        sid = subject_id(ident)
        assert len(sid) == 16 and identity_of(sid) == ident
    for bad in ("", "3171x00000000007", "9999000000000007", "31710000000000070"):
        with pytest.raises(ValueError, match="not a synthetic subject id"):
            identity_of(bad)
