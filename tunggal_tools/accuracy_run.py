"""The work behind `tunggal accuracy`: data, an in-process Gallery, both searches.

Data: synthetic (tunggal_tools.synthetic.FaceModel; capture 0 enrolled, capture 1
of --mated enrolled identities as mated probes, capture 1 of --nonmated
identities >= 1e9, never enrolled, as non-mated probes), or .npy files: the
gallery (n, d) float32 where row i is subject i, the probes (m, d) float32,
and each probe's subject (int, -1 for a non-mated probe). Rows are
L2-normalised on load.

The gallery is the matcher node's shard (matcher.gallery.Gallery) in a
temporary directory, one template per subject (subject id str(i)). HNSW
results come from Gallery.search, exactly as a node answers Identify; exact
results from the gallery's exact matrix, in batches (the owner of the top-1
template is the top-1 subject).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from matcher.accuracy import Accuracy, evaluate
from matcher.gallery import EnrollItem, Gallery
from tunggal.settings import NodeSettings
from tunggal_tools.accuracy import Report
from tunggal_tools.synthetic import FaceModel

FloatMatrix = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

NONMATED_BASE = 10**9
"""Synthetic non-mated identities are numbered from here: never enrolled."""
_ENROLL_BATCH = 10_000
_GEN_BATCH = 65_536


@dataclass(frozen=True)
class ProbeSet:
    """A gallery (row i = subject i) and probes with their true subject (-1: none)."""

    gallery: FloatMatrix
    probes: FloatMatrix
    truth: IntArray
    source: str

    @property
    def mated(self) -> npt.NDArray[np.bool_]:
        """Which probes have their subject in the gallery."""
        out: npt.NDArray[np.bool_] = self.truth >= 0
        return out


def _unit(x: npt.ArrayLike) -> FloatMatrix:
    a = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("zero vector: templates and probes must be non-zero")
    out: FloatMatrix = (a / norms).astype(np.float32)
    return out


def synthetic(
    subjects: int,
    dim: int = 128,
    structure: float = 0.7,
    mated: int = 2000,
    nonmated: int = 10_000,
    seed: int = 7,
    genuine: float = 0.68,
) -> ProbeSet:
    """Synthetic gallery and probes from FaceModel (see the module docstring)."""
    if subjects < 1 or mated < 0 or nonmated < 0 or mated + nonmated < 1:
        raise ValueError("need >= 1 subject and >= 1 probe")
    model = FaceModel(dim=dim, structure=structure, genuine=genuine, seed=seed)
    gallery = np.empty((subjects, dim), dtype=np.float32)
    for lo in range(0, subjects, _GEN_BATCH):
        hi = min(lo + _GEN_BATCH, subjects)
        gallery[lo:hi] = model.samples(range(lo, hi), 0)
    rng = np.random.default_rng([seed, 19795])
    mated_ids = np.sort(rng.choice(subjects, size=min(mated, subjects), replace=False))
    nonmated_ids = NONMATED_BASE + np.arange(nonmated, dtype=np.int64)
    probes = np.concatenate([model.samples(mated_ids, 1), model.samples(nonmated_ids, 1)]).astype(
        np.float32
    )
    truth = np.concatenate([mated_ids, np.full(nonmated, -1)]).astype(np.int64)
    source = (
        f"synthetic FaceModel(dim={dim}, structure={structure}, genuine={genuine}, seed={seed})"
    )
    return ProbeSet(gallery, probes, truth, source)


_MATRIX = 2
"""Dimensions of a gallery or probe array: (rows, dim)."""


def from_npy(gallery_npy: Path, probes_npy: Path, truth_npy: Path) -> ProbeSet:
    """Gallery, probes and probe truth from .npy files (see the module docstring)."""
    gallery = np.load(gallery_npy)
    probes = np.load(probes_npy)
    truth = np.load(truth_npy)
    if gallery.ndim != _MATRIX or probes.ndim != _MATRIX or gallery.shape[1] != probes.shape[1]:
        raise ValueError(
            f"gallery {gallery.shape} and probes {probes.shape} must be (n, d), (m, d)"
        )
    if not np.issubdtype(truth.dtype, np.integer) or truth.shape != (probes.shape[0],):
        raise ValueError(f"probe truth must be ({probes.shape[0]},) integers, got {truth.shape}")
    if ((truth < -1) | (truth >= gallery.shape[0])).any():
        raise ValueError(f"probe truth must be -1 or a gallery row 0..{gallery.shape[0] - 1}")
    return ProbeSet(_unit(gallery), _unit(probes), truth.astype(np.int64), f"{gallery_npy.name}")


@dataclass(frozen=True)
class TopOne:
    """Rank-1 subject (None: no result) and its score (-inf: none) per probe."""

    subjects: list[str | None]
    scores: npt.NDArray[np.float64]


def build_gallery(data: ProbeSet, data_dir: Path, escalate_band: float) -> Gallery:
    """A Gallery in `data_dir` holding one template per subject, subject i = str(i)."""
    n, dim = data.gallery.shape
    gallery = Gallery(
        NodeSettings(
            data_dir=data_dir,
            dim=dim,
            initial_capacity=max(n, 16),
            escalate_band=escalate_band,
        )
    )
    for lo in range(0, n, _ENROLL_BATCH):
        hi = min(lo + _ENROLL_BATCH, n)
        items = [EnrollItem(str(i), data.gallery[i : i + 1], False) for i in range(lo, hi)]
        for result in gallery.enroll(items):
            if isinstance(result, Exception):
                raise result
    return gallery


def search_exact(gallery: Gallery, probes: FloatMatrix) -> TopOne:
    """Exact top-1 of every probe (batched): the owner of the best template."""
    top = gallery.exact_top1(probes)
    return TopOne([s for s, _ in top], np.array([v for _, v in top], dtype=np.float64))


def search_hnsw(gallery: Gallery, probes: FloatMatrix) -> TopOne:
    """Gallery.search (HNSW at the gallery's ef, as a node serves it) of every probe."""
    subjects: list[str | None] = []
    scores = np.full(len(probes), -np.inf, dtype=np.float64)
    for i, probe in enumerate(probes):
        matches = gallery.search(probe, 1, -1.0, exact=False)
        subjects.append(matches[0].subject_id if matches else None)
        if matches:
            scores[i] = matches[0].score
    return TopOne(subjects, scores)


def _accuracy(data: ProbeSet, top: TopOne) -> Accuracy:
    mated = data.mated
    truth = [str(t) for t in data.truth[mated].tolist()]
    idx = np.nonzero(mated)[0]
    return evaluate(
        truth,
        [top.subjects[i] for i in idx.tolist()],
        top.scores[mated],
        top.scores[~mated],
    )


def run(
    data: ProbeSet,
    seed: int = 7,
    escalate_band: float | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Build, calibrate and search; `log(msg)` gets progress lines (default: stderr)."""

    def say(msg: str) -> None:
        if log is None:
            print(msg, file=sys.stderr, flush=True)
        else:
            log(msg)

    band = NodeSettings().escalate_band if escalate_band is None else escalate_band
    n, dim = data.gallery.shape
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="tunggal-accuracy-") as tmp:
        t0 = time.monotonic()
        say(f"enrolling {n:,} subjects (dim {dim}) ...")
        gallery = build_gallery(data, Path(tmp) / "gallery", band)
        try:
            seconds["enroll"] = time.monotonic() - t0
            t0 = time.monotonic()
            say(f"  {seconds['enroll']:.1f} s; calibrating ef against exact search ...")
            calibration = gallery.calibrate(seed=seed)
            seconds["calibrate"] = time.monotonic() - t0
            t0 = time.monotonic()
            say(
                f"  {seconds['calibrate']:.1f} s: ef={calibration.ef}; "
                f"exact search of {len(data.probes):,} probes ..."
            )
            exact = search_exact(gallery, data.probes)
            seconds["exact"] = time.monotonic() - t0
            t0 = time.monotonic()
            say(f"  {seconds['exact']:.1f} s; HNSW search (ef={gallery.ef}) ...")
            hnsw = search_hnsw(gallery, data.probes)
            seconds["hnsw"] = time.monotonic() - t0
            say(f"  {seconds['hnsw']:.1f} s")
            escalations = gallery.stats().escalations
        finally:
            gallery.close(snapshot=False)
    same = np.array([a == b for a, b in zip(hnsw.subjects, exact.subjects, strict=True)])
    return Report(
        source=data.source,
        subjects=n,
        dim=dim,
        calibration=calibration,
        escalate_band=band,
        escalations=escalations,
        methods={
            f"HNSW ef={calibration.ef}": _accuracy(data, hnsw),
            "exact": _accuracy(data, exact),
        },
        agreement_mated=float(same[data.mated].mean()),
        agreement_nonmated=float(same[~data.mated].mean()),
        seconds=seconds,
    )
