"""Synthetic face-like templates for demos, tests and benchmarks.

Each identity has a unit "centre"; a template of it is the centre plus
isotropic noise, re-normalised. With noise sigma per coordinate the expected
genuine cosine between two templates of one identity is about
1 / (1 + dim * sigma^2); `noise_for_genuine` inverts that.

`structure` in [0, 1] sets how much of each centre lies in a random
`rank`-dimensional subspace: 0 is the isotropic worst case (centres uniform
on the sphere; impostor cosines ~ N(0, 1/dim)), values near 1 give the
low-rank structure real embedders show (impostor cosines spread wider,
~ N(0, structure^2/rank)) and which HNSW navigates far more easily.

Everything is a pure function of (seed, identity number), so a gallery can
be regenerated, and probes made for it, without storing anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float32]
_BLOCK = 1024


def noise_for_genuine(dim: int, genuine: float) -> float:
    """Per-coordinate noise sigma giving a mean genuine cosine of `genuine`."""
    return float(np.sqrt((1.0 / genuine - 1.0) / dim))


def _normalise(x: npt.NDArray[np.float64]) -> FloatMatrix:
    out: FloatMatrix = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


@dataclass(frozen=True)
class FaceModel:
    """A population of synthetic identities.

    Attributes:
        dim: template dimension.
        structure: 0 (isotropic) .. 1 (all in a low-rank subspace).
        rank: dimension of the structured subspace.
        genuine: mean cosine between two templates of one identity.
        seed: makes every identity and sample reproducible.
    """

    dim: int = 128
    structure: float = 0.7
    rank: int = 64
    genuine: float = 0.68
    seed: int = 7

    def _basis(self) -> npt.NDArray[np.float64]:
        rng = np.random.default_rng([self.seed, 0])
        q, _ = np.linalg.qr(rng.standard_normal((self.dim, self.rank)))
        return q

    def _blocks(
        self, ids: npt.ArrayLike, make: Callable[[int], npt.NDArray[np.float64]]
    ) -> npt.NDArray[np.float64]:
        """Rows for `ids`, generated a block of _BLOCK identities at a time."""
        idx = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.empty((idx.shape[0], self.dim), dtype=np.float64)
        blocks = idx // _BLOCK
        for block in np.unique(blocks):
            where = np.nonzero(blocks == block)[0]
            out[where] = make(int(block))[idx[where] % _BLOCK]
        return out

    def centres(self, ids: npt.ArrayLike) -> FloatMatrix:
        """Unit identity centres for identity numbers `ids`, shape (n, dim)."""
        basis = self._basis()

        def make(block: int) -> npt.NDArray[np.float64]:
            rng = np.random.default_rng([self.seed, 1, block])
            low = rng.standard_normal((_BLOCK, self.rank)) @ basis.T / np.sqrt(self.rank)
            iso = rng.standard_normal((_BLOCK, self.dim)) / np.sqrt(self.dim)
            mixed: npt.NDArray[np.float64] = (
                np.sqrt(self.structure) * low + np.sqrt(1.0 - self.structure) * iso
            )
            return mixed

        return _normalise(self._blocks(ids, make))

    def samples(self, ids: npt.ArrayLike, capture: int) -> FloatMatrix:
        """One template per identity in `ids`, from capture number `capture`.

        Capture 0 is what gets enrolled; captures 1, 2, ... are later probes
        of the same people. Same (ids, capture) always gives the same rows.
        Two captures each carry noise of variance sigma^2 per coordinate, so
        their cosine is about 1 / (1 + dim * sigma^2) = `genuine`.
        """
        sigma = noise_for_genuine(self.dim, self.genuine)

        def make(block: int) -> npt.NDArray[np.float64]:
            rng = np.random.default_rng([self.seed, 2, block, capture])
            return rng.standard_normal((_BLOCK, self.dim))

        centres = self.centres(ids).astype(np.float64)
        return _normalise(centres + sigma * self._blocks(ids, make))


_NIK_PREFIX = "3171"
_NIK_DIGITS = 16


def subject_id(ident: int) -> str:
    """A NIK-shaped subject id for identity number `ident` (16 digits)."""
    return f"{_NIK_PREFIX}{ident:0{_NIK_DIGITS - len(_NIK_PREFIX)}d}"


def identity_of(subject: str) -> int:
    """The identity number behind a `subject_id` (ValueError for any other id)."""
    if len(subject) != _NIK_DIGITS or not subject.startswith(_NIK_PREFIX) or not subject.isdigit():
        raise ValueError(f"{subject!r} is not a synthetic subject id")
    return int(subject[len(_NIK_PREFIX) :])
