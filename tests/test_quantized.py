"""QuantizedMatrix (int8 rows, proven bound, exact re-rank) against numpy exact search."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matcher.exact import numpy_topk
from matcher.quantized import QuantizedMatrix, quantize
from tunggal_tools.synthetic import FaceModel

FloatMatrix = npt.NDArray[np.float32]


def unit(x: npt.NDArray[np.float64]) -> FloatMatrix:
    out: FloatMatrix = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


class Rows:
    """The float32 truth the matrix re-ranks from, counting the rows it reads."""

    def __init__(self, vectors: FloatMatrix) -> None:
        self.vectors = vectors
        self.read = 0

    def __call__(self, labels: npt.NDArray[np.int64]) -> FloatMatrix:
        self.read += len(labels)
        out: FloatMatrix = self.vectors[labels]
        return out


def matrix(vectors: FloatMatrix, block_rows: int = 1024) -> tuple[QuantizedMatrix, Rows]:
    rows = Rows(vectors)
    m = QuantizedMatrix(vectors.shape[1], 100, truth=rows, block_rows=block_rows)
    m.grow(len(vectors))  # from a partial block to several: the widening path
    m.set_rows(np.arange(len(vectors), dtype=np.int64), vectors)
    return m, rows


@pytest.mark.parametrize(("structure", "dim"), [(0.7, 128), (0.0, 128), (0.7, 512)])
@pytest.mark.parametrize("k", [1, 10, 30])
def test_int8_search_is_numpy_exact_search(structure: float, dim: int, k: int) -> None:
    model = FaceModel(dim=dim, structure=structure)
    gallery = model.samples(range(5000), 0)
    m, _ = matrix(gallery)
    dead = np.arange(0, 5000, 11, dtype=np.int64)
    m.clear_rows(dead)
    alive = np.ones(5000, dtype=bool)
    alive[dead] = False
    probes = model.samples(range(0, 5000, 25), 1)
    labels, scores = m.search(probes, k)
    want_labels, want_scores = numpy_topk(gallery, alive, probes, k)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-5)


def test_floors_keep_only_rows_at_or_above_them_and_read_few_rows() -> None:
    model = FaceModel(dim=128, structure=0.7)
    gallery = model.samples(range(8000), 0)
    m, rows = matrix(gallery)
    probes = model.samples(range(0, 8000, 40), 1)  # mated: each mate scores ~0.68
    floor = 0.5
    labels, _ = m.search(probes, 30, floors=np.full(len(probes), floor))
    want_labels, want_scores = numpy_topk(gallery, np.ones(8000, bool), probes, 30)
    keep = want_scores >= floor
    np.testing.assert_array_equal(labels, np.where(keep, want_labels, -1))
    assert (labels[:, 0] == np.arange(0, 8000, 40)).all()
    # Only what the bound cannot rule out is read in float32: about the mates.
    assert rows.read <= 3 * len(probes)


def test_ties_go_to_the_lower_label_and_k_beyond_the_live_rows_pads() -> None:
    base = unit(np.random.default_rng(3).standard_normal((4, 64)))
    gallery = np.concatenate([base, base, base])  # rows i, i+4, i+8 are identical
    m, _ = matrix(gallery, block_rows=5)  # the copies sit in different blocks
    m.clear_rows(np.array([4], dtype=np.int64))
    labels, scores = m.search(base[:1], 5)
    assert labels[0, :2].tolist() == [0, 8]  # row 4 is dead; 0 before 8 at the same score
    assert scores[0, 0] == scores[0, 1]
    labels, scores = m.search(base[:1], 20)
    assert (labels[0] >= 0).sum() == 11 and (labels[0, 11:] == -1).all()
    assert np.isneginf(scores[0, 11:]).all()


def test_an_empty_or_all_dead_matrix_answers_nothing() -> None:
    vectors = unit(np.random.default_rng(4).standard_normal((10, 32)))
    m = QuantizedMatrix(32, 16, truth=Rows(vectors))
    labels, scores = m.search(vectors[:2], 3)
    assert (labels == -1).all() and np.isneginf(scores).all()
    m.set_rows(np.arange(10, dtype=np.int64), vectors)
    m.clear_rows(np.arange(10, dtype=np.int64))
    labels, _ = m.search(vectors[:2], 3)
    assert (labels == -1).all()
    assert not m.is_alive(np.arange(10, dtype=np.int64)).any()
    with pytest.raises(ValueError, match=r"probes must be \(n, 32\)"):
        m.search(vectors[:, :16], 3)


def test_memory_is_dim_plus_twelve_bytes_a_row() -> None:
    m = QuantizedMatrix(128, 200_000, truth=Rows(np.zeros((1, 128), np.float32)))
    assert m.nbytes == 200_000 * (128 + 12)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=2, max_value=600),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.floats(min_value=0.05, max_value=20.0),
)
def test_the_error_bound_holds(dim: int, seed: int, spread: float) -> None:
    """|p.x - approx| <= e_x + e_p (1 + e_x) for unit p, x, however skewed the coordinates."""
    rng = np.random.default_rng(seed)
    x = unit(rng.standard_normal((8, dim)) * rng.exponential(spread, (8, dim)))
    codes, scale, error = quantize(x)
    rebuilt = codes.astype(np.float64) * scale[:, None]
    assert (np.linalg.norm(x - rebuilt, axis=1) <= error).all()
    exact = x[:4].astype(np.float64) @ x[4:].T.astype(np.float64)
    approx = rebuilt[:4] @ rebuilt[4:].T
    bound = error[4:][None, :] + error[:4, None] * (1 + error[4:][None, :])
    assert (np.abs(exact - approx) <= bound + 1e-9).all()
