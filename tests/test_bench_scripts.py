"""Benchmark scripts on small real data, so they keep working between bench runs.

bench.sharding: two real galleries (hnswlib + SQLite under tmp_path) hold the
even and the odd identities; what the benchmark loads from their directories
must match what was enrolled, and its merged answer must be the exact top-k
over both. bench.exact_int8: a whole run on a small gallery.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import exact_int8
from bench.sharding import load_shard, sharded_top
from matcher.gallery import EnrollItem, Gallery
from tunggal.settings import NodeSettings
from tunggal.synthetic import FaceModel, subject_id

_N = 600
_MODEL = FaceModel(dim=64, structure=0.7, rank=16)


def _node_dir(path: Path, ids: range) -> Path:
    gallery = Gallery(
        NodeSettings(data_dir=path, dim=_MODEL.dim, initial_capacity=1024, calibrate=False)
    )
    templates = _MODEL.samples(ids, 0)
    gallery.enroll(
        [EnrollItem(subject_id(i), templates[j : j + 1], False) for j, i in enumerate(ids)]
    )
    gallery.close()  # writes the snapshot the benchmark loads
    return path


def test_load_shard_and_merged_top_k_match_exact_search(tmp_path: Path) -> None:
    even = load_shard(_node_dir(tmp_path / "node-0", range(0, _N, 2)), _MODEL.dim)
    odd = load_shard(_node_dir(tmp_path / "node-1", range(1, _N, 2)), _MODEL.dim)
    for shard, first in ((even, 0), (odd, 1)):
        held = shard.identity >= 0
        assert sorted(shard.identity[held].tolist()) == list(range(first, _N, 2))
        expected = _MODEL.samples(shard.identity[held], 0)
        assert np.allclose(shard.rows[held], expected, atol=1e-6)
        shard.index.set_ef(_N)  # a beam over every row: hnswlib answers exactly here
    gallery = _MODEL.samples(range(_N), 0)
    probes = _MODEL.samples(range(0, _N, 7), 1)
    for probe in probes:
        exact = np.argsort(-(gallery @ probe), kind="stable")[:10].tolist()
        assert sharded_top([even, odd], probe[None, :]) == exact


def test_load_shard_refuses_a_directory_without_snapshot(tmp_path: Path) -> None:
    (tmp_path / "node-0").mkdir()
    with pytest.raises(SystemExit, match="no snapshot"):
        load_shard(tmp_path / "node-0", _MODEL.dim)


def test_exact_int8_bench_runs_and_finds_the_answers_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--size", "3000", "--probes", "64", "--singles", "2", "--repeats", "1"]
    exact_int8.main([*argv, "--no-write", "--cache", str(tmp_path)])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| top-")]
    assert len(rows) == 3
    for row in rows:
        identical, hits = row.rstrip(" |").split(" | ")[-2:]
        assert float(identical) >= 0.98  # label for label; a near-tie may swap two
        assert float(hits) == 1.0
    assert "Matrix bytes per row: float32 517, int8 140." in out
