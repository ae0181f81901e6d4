"""Benchmark scripts on small real data, so they keep working between bench runs.

bench.sharding: two real galleries (hnswlib + SQLite under tmp_path) hold the
even and the odd identities; what the benchmark loads from their directories
must match what was enrolled, and its merged answer must be the exact top-k
over both. bench.exact_int8 and bench.memory: whole runs on small galleries.
bench.report: runs land in their day's file, and the record's links resolve.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from bench import exact_int8, memory
from bench.report import BENCHMARKS, append
from bench.sharding import load_shard, sharded_top
from matcher.gallery import EnrollItem, Gallery
from tests.conftest import free_port_run
from tunggal.settings import NodeSettings
from tunggal_tools.synthetic import FaceModel, subject_id

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


@pytest.mark.slow  # six cluster starts and two calibrations: about 30 s on 2 cores
@pytest.mark.cluster
def test_memory_bench_reads_rest_and_steady_and_fits_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--sizes", "2100", "4200", "--rounds", "1", "--round-s", "1", "--no-write"]
    memory.main([*argv, "--cache", str(tmp_path / "raw"), "--port", str(free_port_run(3))])
    out = capsys.readouterr().out
    sizes = [
        line.split(" | ")
        for line in out.splitlines()
        if line.startswith(("| 2,100 |", "| 4,200 |"))
    ]
    readings = sizes[:2]  # the first table: MiB per state
    assert [row[0] for row in readings] == ["| 2,100", "| 4,200"]
    for row in readings:
        rest, mix, calibrated_mix = (float(row[i].replace(",", "")) for i in (3, 4, 6))
        assert mix > rest and calibrated_mix > rest  # exact searches built their engine
    calls = [row for row in sizes if "Identify exact" in row[-1]]
    assert len(calls) == 2
    for row in calls:
        for part in row[-1].rstrip(" |").split("; "):
            ok, answered = part.rsplit(" ", 2)[-2].split("/")
            assert ok == answered and int(ok) > 0, part
    fits = [line for line in out.splitlines() if line.startswith("| nodes ")]
    assert len(fits) == len(memory.STATES)
    for line in fits:
        per_template = float(line.split(" | ")[1].strip("* B").replace(",", ""))
        assert per_template > 0


def test_fit_separates_fixed_and_per_template_memory() -> None:
    fit = memory.Fit.of([(1000, 5_000 + 1000 * 700), (3000, 5_000 + 3000 * 700)])
    assert fit.per_template == pytest.approx(700)
    assert fit.fixed == pytest.approx(5_000)
    assert fit.at(10_000) == pytest.approx(5_000 + 7_000_000)
    with pytest.raises(ValueError, match="two or more sizes"):
        memory.Fit.of([(1000, 1), (1000, 2)])


def test_append_files_each_run_under_its_day_and_lists_new_days(tmp_path: Path) -> None:
    summary = tmp_path / "BENCHMARKS.md"
    summary.write_text(
        "# Benchmarks\n\n## Targets\n\n## Runs\n\n- [2026-12-01](benchmarks/2026-12-01.md)\n"
    )
    runs = tmp_path / "benchmarks"
    first = append("## A run — 2026-12-06 05:00 UTC\n\nfigures", runs, summary)
    second = append("## Another — 2026-12-06 06:00 UTC\n\nmore", runs, summary)
    assert first == second == runs / "2026-12-06.md"
    text = first.read_text()
    assert text.startswith("# Benchmark runs of 2026-12-06\n")
    assert text.index("## A run") < text.index("## Another")
    assert summary.read_text().splitlines()[-2:] == [
        "- [2026-12-01](benchmarks/2026-12-01.md)",
        "- [2026-12-06](benchmarks/2026-12-06.md)",
    ]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    kept = "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def test_every_link_of_the_benchmark_record_names_a_run_that_exists() -> None:
    docs = BENCHMARKS.parent
    links = re.findall(r"\]\((benchmarks/[^)#\s]+)(?:#([^)\s]+))?\)", BENCHMARKS.read_text())
    assert links
    for page in (docs / "operations.md", docs / "storage.md"):
        links += re.findall(r"\]\((benchmarks/[^)#\s]+)(?:#([^)\s]+))?\)", page.read_text())
    for path, anchor in links:
        target = docs / path
        assert target.exists(), path
        if anchor:
            headings = [
                _anchor(line.lstrip("#"))
                for line in target.read_text().splitlines()
                if line.startswith("#")
            ]
            assert anchor in headings, f"{path}#{anchor}"
