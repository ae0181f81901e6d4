"""The gallery in process: exact-matrix storage types and rebuilding from the store.

Real hnswlib indexes and real SQLite files under tmp_path; no gRPC here
(tests/test_node.py covers the served node).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from matcher.gallery import EnrollItem, Gallery, SearchQuery
from matcher.store import Store
from tunggal.settings import NodeSettings
from tunggal_tools.synthetic import FaceModel, subject_id

_N = 2_000
_MODEL = FaceModel(dim=128, structure=0.7)


def _settings(path: Path, dtype: str = "float32", search_threads: int = 0) -> NodeSettings:
    return NodeSettings(
        data_dir=path,
        initial_capacity=_N,
        exact_dtype=dtype,
        calibrate=False,
        ef_search=64,
        search_threads=search_threads,
    )


def _enroll(gallery: Gallery, ids: range) -> None:
    templates = _MODEL.samples(ids, 0)
    gallery.enroll(
        [EnrollItem(subject_id(i), templates[j : j + 1], False) for j, i in enumerate(ids)]
    )


def _index_vectors(gallery: Gallery, labels: np.ndarray) -> np.ndarray:
    return np.asarray(gallery._memory.index.get_items(labels), dtype=np.float32)


def _float32_and(tmp_path: Path, dtype: str) -> tuple[Gallery, Gallery]:
    """Two galleries of the same templates: float32 rows and `dtype` rows."""
    pair = Gallery(_settings(tmp_path / "float32")), Gallery(_settings(tmp_path / dtype, dtype))
    for gallery in pair:
        _enroll(gallery, range(_N))
    return pair


def _mated_probes() -> list[tuple[np.ndarray, int]]:
    """A new capture of every 40th identity, with the identity."""
    ids = list(range(0, _N, 40))
    return list(zip(_MODEL.samples(ids, 1), ids, strict=True))


def test_float16_matrix_halves_memory_and_keeps_answers(tmp_path: Path) -> None:
    full, half = _float32_and(tmp_path, "float16")
    assert half.matrix_bytes < 0.55 * full.matrix_bytes
    for probe, i in _mated_probes():
        for exact in (True, False):
            top_full = full.search(probe, 3, -1.0, exact)
            top_half = half.search(probe, 3, -1.0, exact)
            assert top_half[0].subject_id == top_full[0].subject_id == subject_id(i)
            assert abs(top_half[0].score - top_full[0].score) <= 5e-4
        score_full, _ = full.verify(subject_id(i), probe)
        score_half, _ = half.verify(subject_id(i), probe)
        assert score_full != score_half  # the rows really are rounded...
        assert abs(score_full - score_half) <= 5e-4  # ...within the documented bound
    full.close(snapshot=False)
    half.close(snapshot=False)


def test_int8_matrix_takes_a_quarter_and_keeps_exact_answers(tmp_path: Path) -> None:
    full, small = _float32_and(tmp_path, "int8")
    assert small.matrix_bytes < 0.3 * full.matrix_bytes
    mated = _mated_probes()
    for probe, i in mated:
        for min_score in (-1.0, 0.3):
            want = full.search(probe, 5, min_score, True)
            got = small.search(probe, 5, min_score, True)
            assert [m.subject_id for m in got] == [m.subject_id for m in want]
            assert [m.score for m in got] == pytest.approx([m.score for m in want], abs=1e-5)
            assert got[0].subject_id == subject_id(i)
        score_full, _ = full.verify(subject_id(i), probe)
        score_small, _ = small.verify(subject_id(i), probe)
        assert score_small == pytest.approx(score_full, abs=1e-5)  # float32 rows, not int8
    small._memory.index.mark_deleted(5)  # an index that lost a live label: the store answers
    assert small.search(mated[0][0], 1, -1.0, True)[0].subject_id == subject_id(0)
    assert small.verify(subject_id(5), _MODEL.samples([5], 1)[0])[0] > 0.5
    small.delete(subject_id(0))
    assert all(m.subject_id != subject_id(0) for m in small.search(mated[0][0], 5, -1.0, True))
    full.close(snapshot=False)
    small.close(snapshot=False)
    reopened = Gallery(_settings(tmp_path / "int8", "int8"))  # quantised again from the store
    top = reopened.search(mated[1][0], 1, -1.0, True)
    assert top[0].subject_id == subject_id(mated[1][1])
    reopened.close(snapshot=False)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_index_is_rebuilt_and_replayed_from_the_stored_float32_templates(
    tmp_path: Path, dtype: str
) -> None:
    path = tmp_path / "g"
    gallery = Gallery(_settings(path, dtype))
    _enroll(gallery, range(_N // 2))
    gallery.snapshot()
    _enroll(gallery, range(_N // 2, _N))  # after the snapshot: replayed from the log
    gallery.close(snapshot=False)
    store = Store(path / "gallery.sqlite", 128)
    labels = np.arange(_N, dtype=np.int64)
    stored = store.vectors(labels)
    store.close()
    rounded = stored.astype(np.float16).astype(np.float32)
    assert np.abs(stored - rounded).max() > 1e-5  # float16 rows would be told apart

    replayed = Gallery(_settings(path, dtype))  # snapshot + log tail
    np.testing.assert_allclose(_index_vectors(replayed, labels), stored, rtol=0, atol=1e-6)
    replayed.close(snapshot=False)
    for snap in (path / "snapshots").iterdir():
        (snap / "index.bin").write_bytes(b"")  # no usable snapshot: a full rebuild
    rebuilt = Gallery(_settings(path, dtype))
    np.testing.assert_allclose(_index_vectors(rebuilt, labels), stored, rtol=0, atol=1e-6)
    assert rebuilt.search(_MODEL.samples([5], 1)[0], 1, -1.0, False)[0].subject_id == subject_id(5)
    rebuilt.close(snapshot=False)


def test_store_vectors_keeps_order_and_names_a_missing_label(tmp_path: Path) -> None:
    gallery = Gallery(_settings(tmp_path / "g"))
    _enroll(gallery, range(10))
    gallery.close(snapshot=False)
    store = Store(tmp_path / "g" / "gallery.sqlite", 128)
    labels = np.array([7, 2, 9], dtype=np.int64)
    every = store.vectors(np.arange(10, dtype=np.int64))
    np.testing.assert_array_equal(store.vectors(labels), every[labels])
    with pytest.raises(KeyError, match="label 12 is not stored"):
        store.vectors(np.array([1, 12], dtype=np.int64))
    store.close()


@pytest.mark.parametrize("threads", [1, 3])
def test_search_batch_spread_over_threads_answers_like_single_searches(
    tmp_path: Path, threads: int
) -> None:
    gallery = Gallery(_settings(tmp_path, search_threads=threads))
    try:
        _enroll(gallery, range(_N))
        probes = _MODEL.samples(range(0, _N, 40), 1)  # 50 mated probes: parts of 16 and 17
        queries = [SearchQuery(p, 5, -1.0, False, escalate=False) for p in probes]
        calls: list[tuple[int, int]] = []  # (queries, hnswlib threads) of each knn_query
        knn = gallery._search._knn

        def counted(probes: np.ndarray, k: int, num_threads: int) -> tuple[np.ndarray, np.ndarray]:
            calls.append((len(probes), num_threads))
            return knn(probes, k, num_threads)

        gallery._search._knn = counted  # type: ignore[method-assign,assignment]
        batch = gallery.search_many(queries)
        # One part per search thread, each on one hnswlib thread (hnswlib would put
        # a batch of up to 4 x threads queries on one thread by itself).
        assert sorted(calls) == ([(50, 1)] if threads == 1 else [(16, 1), (17, 1), (17, 1)])
        singles = [gallery.search_many([q])[0] for q in queries]
        assert batch == singles
        assert [m[0].subject_id for m in batch] == [subject_id(i) for i in range(0, _N, 40)]
        # hnswlib's scores are exact: those of the matrix's rows, to float32 rounding.
        for query, matches in zip(queries, batch, strict=True):
            for match in matches:
                score, _ = gallery.verify(match.subject_id, query.probe)
                assert match.score == pytest.approx(score, abs=1e-5)
    finally:
        gallery.close(snapshot=False)
