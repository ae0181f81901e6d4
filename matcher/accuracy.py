"""1:N identification accuracy metrics (ISO/IEC 19795-1, NIST FRVT 1:N terms).

Every search is summarised by its top-1 candidate only:

* a *mated* search (the probe's subject is enrolled) gives the true subject,
  the subject returned at rank 1 (None when nothing came back) and its score;
* a *non-mated* search (the probe's subject is not enrolled) gives the score
  of its rank-1 candidate (-inf when nothing came back).

With those, at a decision threshold T:

* FPIR(T), the false positive identification rate: the share of non-mated
  searches whose top score is >= T (someone would be wrongly named);
* FNIR(T), the false negative identification rate: the share of mated
  searches whose mate is *not* returned at rank 1 with a score >= T (missed
  mates, whether ranked below someone else or scored under T);
* the rank-1 hit rate: the share of mated searches with the mate at rank 1
  whatever its score (1 - FNIR at T = -inf).

`threshold_at_fpir` picks the lowest T whose FPIR does not exceed a target;
`operating_point` reports FNIR there. An FPIR of p is only estimated
meaningfully from at least 10 / p non-mated searches (about ten false
positives at the threshold); `OperatingPoint.enough` says whether there were.
`det_curve` traces (FPIR, FNIR) over every threshold the data can tell apart.

Everything here is pure: arrays in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Scores = npt.NDArray[np.float64]
Hits = npt.NDArray[np.bool_]

FPIR_TARGETS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
ERRORS_PER_ESTIMATE = 10
"""Non-mated searches needed per target FPIR p: ERRORS_PER_ESTIMATE / p."""


def _scores(values: npt.ArrayLike) -> Scores:
    out: Scores = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isnan(out).any():
        raise ValueError("scores must not be NaN (use -inf for an empty result)")
    return out


def mate_hits(truth: Sequence[str], top: Sequence[str | None]) -> Hits:
    """Per mated search: is the rank-1 subject the true one?"""
    if len(truth) != len(top):
        raise ValueError(f"{len(truth)} true subjects but {len(top)} results")
    hits: Hits = np.array(
        [t is not None and t == s for s, t in zip(truth, top, strict=True)], dtype=bool
    )
    return hits


def rank1_hit_rate(hits: npt.ArrayLike) -> float:
    """Share of mated searches with the mate at rank 1 (nan when there are none)."""
    h = np.asarray(hits, dtype=bool)
    return float(h.mean()) if h.size else math.nan


def fpir(nonmated_scores: npt.ArrayLike, threshold: float) -> float:
    """Share of non-mated searches whose top score is >= threshold."""
    s = _scores(nonmated_scores)
    return float((s >= threshold).mean()) if s.size else math.nan


def fnir(hits: npt.ArrayLike, mated_scores: npt.ArrayLike, threshold: float) -> float:
    """Share of mated searches without the mate at rank 1 with a score >= threshold."""
    h = np.asarray(hits, dtype=bool).reshape(-1)
    s = _scores(mated_scores)
    if h.shape != s.shape:
        raise ValueError(f"{h.size} hit flags but {s.size} scores")
    return float(1.0 - (h & (s >= threshold)).mean()) if h.size else math.nan


def nonmated_needed(target: float) -> int:
    """Non-mated searches needed to estimate FPIR = target (10 / target)."""
    if not 0 < target <= 1:
        raise ValueError(f"target FPIR must be in (0, 1], got {target}")
    return math.ceil(ERRORS_PER_ESTIMATE / target - 1e-9)


def threshold_at_fpir(nonmated_scores: npt.ArrayLike, target: float) -> float:
    """The lowest threshold T with FPIR(T) <= target.

    At most floor(target * N) of the N non-mated top scores may reach T, so T
    sits just above the next one down (the smallest float above it). With
    target >= 1 every score may pass and T is -inf.
    """
    s = _scores(nonmated_scores)
    if s.size == 0:
        raise ValueError("no non-mated scores")
    if target <= 0:
        raise ValueError(f"target FPIR must be positive, got {target}")
    allowed = math.floor(target * s.size + 1e-9)
    if allowed >= s.size:
        return -math.inf
    ranked = np.sort(s)[::-1]
    return float(np.nextafter(ranked[allowed], np.inf))


@dataclass(frozen=True)
class OperatingPoint:
    """FNIR at the threshold that gives a target FPIR.

    Attributes:
        target: the FPIR asked for.
        threshold: the lowest T with FPIR(T) <= target.
        fpir: FPIR actually reached at T (<= target; lower when scores tie).
        fnir: FNIR at T.
        nonmated: non-mated searches the estimate rests on.
        needed: non-mated searches a meaningful estimate needs (10 / target).
    """

    target: float
    threshold: float
    fpir: float
    fnir: float
    nonmated: int
    needed: int

    @property
    def enough(self) -> bool:
        """Whether there were enough non-mated searches to estimate the target."""
        return self.nonmated >= self.needed


def operating_point(
    hits: npt.ArrayLike,
    mated_scores: npt.ArrayLike,
    nonmated_scores: npt.ArrayLike,
    target: float,
) -> OperatingPoint:
    """FNIR at the lowest threshold whose FPIR is at most `target`."""
    non = _scores(nonmated_scores)
    t = threshold_at_fpir(non, target)
    return OperatingPoint(
        target=target,
        threshold=t,
        fpir=fpir(non, t),
        fnir=fnir(hits, mated_scores, t),
        nonmated=int(non.size),
        needed=nonmated_needed(target),
    )


@dataclass(frozen=True)
class DetCurve:
    """(FPIR, FNIR) at each threshold, thresholds ascending (FPIR falls, FNIR rises)."""

    thresholds: Scores
    fpir: Scores
    fnir: Scores


def det_curve(
    hits: npt.ArrayLike, mated_scores: npt.ArrayLike, nonmated_scores: npt.ArrayLike
) -> DetCurve:
    """The DET curve: (FPIR(T), FNIR(T)) at every distinct finite score T, and +inf.

    Between two consecutive observed scores neither rate changes, so these
    points are the whole curve.
    """
    h = np.asarray(hits, dtype=bool).reshape(-1)
    mated = _scores(mated_scores)
    non = _scores(nonmated_scores)
    if h.shape != mated.shape:
        raise ValueError(f"{h.size} hit flags but {mated.size} scores")
    if h.size == 0 or non.size == 0:
        raise ValueError("a DET curve needs mated and non-mated searches")
    hit_scores = np.sort(mated[h])
    non_sorted = np.sort(non)
    both = np.concatenate([hit_scores, non_sorted])
    thresholds = np.append(np.unique(both[np.isfinite(both)]), np.inf)
    # count(x >= T) = len - (number of x < T) = len - searchsorted(x, T, "left")
    fp = (non.size - np.searchsorted(non_sorted, thresholds, side="left")) / non.size
    found = hit_scores.size - np.searchsorted(hit_scores, thresholds, side="left")
    fn = 1.0 - found / h.size
    return DetCurve(thresholds, fp.astype(np.float64), fn.astype(np.float64))


@dataclass(frozen=True)
class Accuracy:
    """The 1:N accuracy of one search method on one probe set."""

    mated: int
    nonmated: int
    rank1: float
    points: tuple[OperatingPoint, ...]
    det: DetCurve


def evaluate(
    truth: Sequence[str],
    top: Sequence[str | None],
    mated_scores: npt.ArrayLike,
    nonmated_scores: npt.ArrayLike,
    targets: Sequence[float] = FPIR_TARGETS,
) -> Accuracy:
    """Rank-1 hit rate, FNIR at each target FPIR, and the DET curve."""
    hits = mate_hits(truth, top)
    mated = _scores(mated_scores)
    non = _scores(nonmated_scores)
    return Accuracy(
        mated=int(hits.size),
        nonmated=int(non.size),
        rank1=rank1_hit_rate(hits),
        points=tuple(operating_point(hits, mated, non, t) for t in targets),
        det=det_curve(hits, mated, non),
    )
