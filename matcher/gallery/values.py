"""The values a gallery takes and gives: enrollments, searches, matches, stats."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from matcher.matrix import FloatMatrix, Labels

__all__ = [
    "EnrollItem",
    "EnrollResult",
    "FloatMatrix",
    "GalleryStats",
    "Labels",
    "Match",
    "SearchQuery",
]


@dataclass(frozen=True)
class EnrollItem:
    """A validated enrollment request (vectors normalised)."""

    subject_id: str
    vectors: FloatMatrix
    replace: bool
    request_id: str = ""

    def fingerprint(self) -> bytes:
        """Digest of the request's content, to detect a reused request_id."""
        digest = hashlib.sha256()
        digest.update(self.subject_id.encode())
        digest.update(b"R" if self.replace else b"A")
        digest.update(np.ascontiguousarray(self.vectors, dtype="<f4").tobytes())
        return digest.digest()


@dataclass(frozen=True)
class EnrollResult:
    """Outcome of one enrollment."""

    subject_id: str
    template_count: int
    replayed: bool = False


@dataclass(frozen=True)
class SearchQuery:
    """One search: a normalised probe, how many subjects, the score floor, exact or HNSW."""

    probe: FloatMatrix
    k: int
    min_score: float
    exact: bool
    escalate: bool = True  # re-check exactly when the HNSW answer is ambiguous


@dataclass(frozen=True)
class Match:
    """A subject and its best exact score."""

    subject_id: str
    score: float


@dataclass(frozen=True)
class GalleryStats:
    """Counts and positions of one gallery, for Stats (ops.v1.NodeStats) and metrics."""

    subjects: int
    templates: int
    capacity: int
    """Template slots allocated (live + free)."""
    ef_search: int
    last_seq: int
    """Sequence number of the newest durable change."""
    snapshot_seq: int
    index_bytes: int
    matrix_bytes: int
    escalations: int
    """Searches this gallery re-checked by exact search (ambiguity band)."""
    calibration_hit_rate: float
    calibration_probes: int
    calibrated_templates: int
    """Live templates when the calibration in force was measured (0: never)."""
    calibration_met: bool
    calibrated_at: float
    """Unix time of the calibration in force (0: never calibrated)."""
