"""Self-calibration of HNSW search width (ef) against exact search.

A node samples live templates, turns each into a probe the way a new capture
of the same person would look (noise matched to the genuine score
distribution), and asks: for which ef does HNSW put the mate at rank 1 as
often as exact search does? It walks a coarse grid up to the first ef whose
rank-1 hit count is at least `target` times exact's, then bisects between
that ef and the last one that fell short, in steps of about an eighth of the
latter (the grid steps by up to 1.5x; each ef the bisection saves is CPU on
every search). Exact search is the oracle, never assumed: a miss by exact
search (the mate is not the most similar) does not count against HNSW.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]

DEFAULT_GRID: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def genuine_noise(dim: int, genuine: float) -> float:
    """Per-coordinate noise sigma so that cos(probe, template) is about `genuine`.

    For a unit t and n ~ N(0, s^2 I): cos(t + n, t) ~ 1 / sqrt(1 + dim s^2).
    """
    return float(np.sqrt((1.0 / genuine**2 - 1.0) / dim))


def make_probes(templates: FloatMatrix, genuine: float, rng: np.random.Generator) -> FloatMatrix:
    """Noisy, re-normalised copies of `templates` at genuine-score distance."""
    sigma = genuine_noise(templates.shape[1], genuine)
    noisy = templates + sigma * rng.standard_normal(templates.shape).astype(np.float32)
    out: FloatMatrix = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
    return out


@dataclass(frozen=True)
class Calibration:
    """Outcome of one calibration run."""

    ef: int
    target: float
    probes: int
    exact_hits: int
    hnsw_hits: int
    templates: int
    met: bool
    table: dict[int, int] = field(default_factory=dict)
    calibrated_at: float = 0.0
    """Unix time of the measurement (0: unknown, e.g. stored by an older node)."""

    @property
    def hit_rate(self) -> float:
        """HNSW rank-1 mate hits relative to exact search's (1.0 = as good)."""
        return self.hnsw_hits / self.exact_hits if self.exact_hits else 1.0


def refinements(short: int, met: int, fraction: int = 8) -> list[int]:
    """The widths strictly between a grid ef that fell `short` and the next one that
    `met` the target: steps of about short / `fraction`, multiples of 8 (at least 8)."""
    step = max(8, short // fraction // 8 * 8)
    return list(range(short + step, met, step))


def choose_ef(
    sources: Sequence[str],
    exact_top: Sequence[str],
    hnsw_top: Callable[[int], Sequence[str]],
    grid: Sequence[int],
    target: float,
    templates: int,
) -> Calibration:
    """Smallest ef whose rank-1 mate hits reach `target` x exact's: the first on
    `grid` that does, then bisected over `refinements` below it (rank-1 hits grow
    with ef, so the bisection tries about log2 of them).

    `sources[i]` is probe i's true subject, `exact_top[i]` exact search's
    rank-1 subject, `hnsw_top(ef)[i]` HNSW's at that ef. `table` holds the
    hits of every ef tried.
    """
    truth = np.array(sources, dtype=object)
    exact_hits = int((np.array(exact_top, dtype=object) == truth).sum())
    needed = target * exact_hits
    table: dict[int, int] = {}

    def hits(ef: int) -> int:
        table[ef] = int((np.array(hnsw_top(ef), dtype=object) == truth).sum())
        return table[ef]

    def outcome(ef: int, met: bool) -> Calibration:
        tried = dict(sorted(table.items()))
        return Calibration(ef, target, len(truth), exact_hits, table[ef], templates, met, tried)

    short: int | None = None
    for ef in sorted(grid):
        if hits(ef) < needed:
            short = ef
            continue
        if short is None:
            return outcome(ef, True)
        finer = refinements(short, ef)
        lo, hi = 0, len(finer)  # finer[hi:] are known to meet the target (and ef does)
        best = ef
        while lo < hi:
            mid = (lo + hi) // 2
            if hits(finer[mid]) >= needed:
                best, hi = finer[mid], mid
            else:
                lo = mid + 1
        return outcome(best, True)
    return outcome(max(grid), False)
