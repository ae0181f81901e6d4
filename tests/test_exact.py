"""ExactMatrix's onnxruntime engine against the numpy reference (numpy_topk)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import onnx
import pytest

from matcher.exact import ExactMatrix, numpy_topk
from matcher.onnx_topk import CPU, OPSET, STORAGE_TYPES, build_model, resolve_providers

CPU_ONLY = [CPU]


def unit(rng: np.random.Generator, n: int, dim: int) -> npt.NDArray[np.float32]:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    out: npt.NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def reference(
    m: ExactMatrix, probes: npt.NDArray[np.float32], k: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """numpy_topk over what the matrix stores (rounded rows, for float16)."""
    labels = np.arange(m.capacity, dtype=np.int64)
    return numpy_topk(m.rows(labels), m.is_alive(labels), probes, k)


def filled(
    rng: np.random.Generator, n: int, dim: int, block_rows: int, dtype: str = "float32"
) -> tuple[ExactMatrix, npt.NDArray[np.float32]]:
    m = ExactMatrix(dim, n, dtype=dtype, providers=CPU_ONLY, block_rows=block_rows)
    vectors = unit(rng, n, dim)
    m.set_rows(np.arange(n, dtype=np.int64), vectors)
    return m, vectors


def assert_same(
    got: tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]],
    want: tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]],
    atol: float = 1e-5,
) -> None:
    labels, scores = got
    ref_labels, ref_scores = want
    assert labels.dtype == np.int64 and scores.dtype == np.float32
    assert labels.shape == ref_labels.shape and scores.shape == ref_scores.shape
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(scores, ref_scores, atol=atol, rtol=0)


def test_graph_is_valid_onnx() -> None:
    for storage in STORAGE_TYPES:
        model = build_model(storage)
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version == OPSET >= 17
        assert [n.op_type for n in model.graph.node][-1] == "TopK"


def test_providers() -> None:
    assert resolve_providers(CPU_ONLY) == (CPU,)
    assert resolve_providers(None)[-1] == CPU
    with pytest.raises(ValueError, match="providers must be drawn from"):
        ExactMatrix(8, 8, providers=["NoSuchExecutionProvider"])
    with pytest.raises(ValueError, match="dtype must be one of"):
        ExactMatrix(8, 8, dtype="int8")


@pytest.mark.parametrize("block_rows", [64, 97, 1000])
def test_matches_numpy_over_several_blocks(block_rows: int) -> None:
    rng = np.random.default_rng(block_rows)
    m, _ = filled(rng, 700, 32, block_rows=block_rows)
    probes = unit(rng, 9, 32)
    for k in (1, 5, 50):
        assert_same(m.search(probes, k), reference(m, probes, k))


def test_more_probes_than_one_graph_run_takes() -> None:
    """Batches beyond the engine's probe chunk (256) are split and reassembled in order."""
    rng = np.random.default_rng(8)
    m, _ = filled(rng, 2000, 16, block_rows=512)
    m.clear_rows(np.arange(0, 2000, 3, dtype=np.int64))
    probes = unit(rng, 600, 16)
    for k in (1, 7):
        assert_same(m.search(probes, k), reference(m, probes, k))


def test_single_probe_and_empty_batch() -> None:
    rng = np.random.default_rng(1)
    m, vectors = filled(rng, 300, 16, block_rows=64)
    labels, scores = m.search(vectors[123:124], 3)
    assert labels.shape == (1, 3) and labels[0, 0] == 123
    assert abs(scores[0, 0] - 1.0) < 1e-5
    labels, scores = m.search(np.zeros((0, 16), np.float32), 3)
    assert labels.shape == (0, 3) and scores.shape == (0, 3)


def test_dead_rows_never_returned_even_when_all_scores_negative() -> None:
    rng = np.random.default_rng(2)
    m, vectors = filled(rng, 400, 16, block_rows=50)
    dead = np.arange(0, 400, 3, dtype=np.int64)
    m.clear_rows(dead)
    live = np.setdiff1d(np.arange(400), dead)
    # The probe scores negative against every live row; zeroed dead rows would
    # score 0 and win without the -inf bias.
    probe = -vectors[live].sum(axis=0, keepdims=True)
    probe /= np.linalg.norm(probe)
    labels, scores = m.search(probe, 400)
    assert (scores[labels >= 0] < 0).any()
    assert not np.isin(labels, dead).any()
    assert set(labels[labels >= 0].tolist()) == set(live.tolist())
    assert (labels[:, len(live) :] == -1).all()
    assert np.isneginf(scores[:, len(live) :]).all()
    assert_same((labels, scores), reference(m, probe, 400))


def test_whole_block_dead_and_revived() -> None:
    rng = np.random.default_rng(3)
    m, vectors = filled(rng, 256, 8, block_rows=64)
    m.clear_rows(np.arange(64, 128, dtype=np.int64))
    probes = vectors[64:70]
    labels, _ = m.search(probes, 10)
    assert not ((labels >= 64) & (labels < 128)).any()
    m.set_rows(np.arange(64, 70, dtype=np.int64), probes)
    labels, _ = m.search(probes, 10)
    np.testing.assert_array_equal(labels[:, 0], np.arange(64, 70))
    assert_same(m.search(probes, 10), reference(m, probes, 10))


def test_k_larger_than_live_rows() -> None:
    rng = np.random.default_rng(4)
    m = ExactMatrix(8, 100, providers=CPU_ONLY, block_rows=16)
    probes = unit(rng, 3, 8)
    labels, scores = m.search(probes, 5)  # nothing stored yet
    assert (labels == -1).all() and np.isneginf(scores).all()
    m.set_rows(np.array([5, 40, 41], dtype=np.int64), unit(rng, 3, 8))
    labels, scores = m.search(probes, 10)
    assert labels.shape == (3, 10)
    assert (np.sort(labels[:, :3], axis=1) == [5, 40, 41]).all()
    assert (labels[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert_same((labels, scores), reference(m, probes, 10))
    assert m.search(probes, 0)[0].shape == (3, 0)


@pytest.mark.parametrize("copy_blocks", [False, True])
def test_growth_and_writes_reach_the_engine(copy_blocks: bool) -> None:
    """Blocks are refreshed after writes and growth, whether the engine wraps
    host memory (CPU) or holds its own copies (as on CUDA)."""
    rng = np.random.default_rng(5)
    m = ExactMatrix(16, 50, providers=CPU_ONLY, block_rows=32)
    m._copy_blocks = copy_blocks  # force the device-copy path on the CPU provider
    first = unit(rng, 50, 16)
    m.set_rows(np.arange(50, dtype=np.int64), first)
    probes = unit(rng, 4, 16)
    assert_same(m.search(probes, 8), reference(m, probes, 8))
    m.grow(300)
    m.grow(10)  # never shrinks
    assert m.capacity == 300
    assert_same(m.search(probes, 8), reference(m, probes, 8))
    more = unit(rng, 200, 16)
    m.set_rows(np.arange(90, 290, dtype=np.int64), more)
    assert_same(m.search(probes, 8), reference(m, probes, 8))
    labels, _ = m.search(more[:5], 1)
    np.testing.assert_array_equal(labels[:, 0], np.arange(90, 95))
    m.clear_rows(np.arange(90, 95, dtype=np.int64))
    labels, _ = m.search(more[:5], 3)
    assert not np.isin(labels, np.arange(90, 95)).any()
    m.set_rows(np.array([7], dtype=np.int64), more[5:6])  # overwrite a live row
    labels, _ = m.search(more[5:6], 2)
    assert set(labels[0].tolist()) == {7, 95}
    if copy_blocks:
        assert m.device_nbytes > 0
    else:  # the CPU provider reads the host matrix in place: no copies per call
        assert m.device_nbytes == 0
        resident = [r for r in m._resident if r is not None]
        assert len(resident) == 10
        for r in resident:
            assert r.data.data_ptr() == m._data[r.start : r.stop].ctypes.data
            assert r.bias.data_ptr() == m._bias[r.start : r.stop].ctypes.data


def test_batched_probes_match_one_at_a_time() -> None:
    rng = np.random.default_rng(6)
    m, _ = filled(rng, 500, 24, block_rows=128)
    probes = unit(rng, 33, 24)
    batch_labels, batch_scores = m.search(probes, 7)
    for i in range(len(probes)):
        labels, scores = m.search(probes[i : i + 1], 7)
        np.testing.assert_array_equal(labels[0], batch_labels[i])
        np.testing.assert_allclose(scores[0], batch_scores[i], atol=1e-6)


def test_float16_storage() -> None:
    rng = np.random.default_rng(7)
    n, dim, k = 600, 64, 10
    m32, vectors = filled(rng, n, dim, block_rows=128)
    m16 = ExactMatrix(dim, n, dtype="float16", providers=CPU_ONLY, block_rows=128)
    m16.set_rows(np.arange(n, dtype=np.int64), vectors)
    assert m16._data.nbytes * 2 == m32._data.nbytes
    assert m16.nbytes < m32.nbytes
    assert m16.rows(np.array([0]))[0].dtype == np.float32
    probes = unit(rng, 20, dim)
    labels, scores = m16.search(probes, k)
    assert scores.dtype == np.float32
    # Exact against what is stored...
    assert_same((labels, scores), reference(m16, probes, k))
    # ...and within 1e-3 of float32 storage, same ids wherever the gaps allow.
    ref_labels, ref_scores = m32.search(probes, k + 1)
    np.testing.assert_allclose(scores, ref_scores[:, :k], atol=1e-3, rtol=0)
    gaps = np.diff(ref_scores, axis=1) < -2e-3  # rank i+1 clearly below rank i
    clear = np.ones((len(probes), k), dtype=bool)
    clear[:, 1:] &= gaps[:, : k - 1]
    clear &= gaps  # and clearly above the next one down
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(labels[clear], ref_labels[:, :k][clear])
    m16.clear_rows(np.arange(0, n, 2, dtype=np.int64))
    labels, _ = m16.search(probes, k)
    assert (labels % 2 == 1).all()


def test_concurrent_searches() -> None:
    rng = np.random.default_rng(8)
    m, _ = filled(rng, 2000, 32, block_rows=256)
    m.clear_rows(np.arange(0, 2000, 5, dtype=np.int64))
    probes = unit(rng, 16, 32)
    want = reference(m, probes, 5)

    def worker() -> None:
        for _ in range(10):
            assert_same(m.search(probes, 5), want)

    with ThreadPoolExecutor(4) as pool:
        for done in [pool.submit(worker) for _ in range(4)]:
            done.result()  # re-raises a worker's failure here


def test_bad_probe_shape() -> None:
    m = ExactMatrix(8, 8, providers=CPU_ONLY)
    with pytest.raises(ValueError, match=r"probes must be \(n, 8\)"):
        m.search(np.zeros((2, 9), np.float32), 1)
