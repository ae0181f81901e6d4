"""A REPLACE is atomic for Verify: an enrolled subject never reads as not enrolled.

A real Gallery (SQLite store, hnswlib index) in this process: one thread
replaces a subject's templates over and over while others Verify it.
tests/test_node_replace.py does the same through a node process over gRPC.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from matcher.gallery import EnrollItem, Gallery
from tests.conftest import replace_while_verifying
from tunggal.errors import NotFound
from tunggal.settings import NodeSettings
from tunggal_tools.synthetic import FaceModel, subject_id

_MODEL = FaceModel(dim=128, structure=0.7)
_REPLACES = 60
_VERIFIERS = 2


def test_verify_never_misses_a_subject_being_replaced(tmp_path: Path) -> None:
    gallery = Gallery(
        NodeSettings(data_dir=tmp_path, initial_capacity=4096, calibrate=False, ef_search=32)
    )
    try:
        enrolled = _MODEL.samples(range(500), 0)
        gallery.enroll([EnrollItem(subject_id(i), enrolled[i : i + 1], False) for i in range(500)])
        target = subject_id(7)
        captures = np.concatenate([_MODEL.samples([7], c) for c in range(1, 5)])
        probe = _MODEL.samples([7], 9)[0]
        missing: list[str] = []

        def replace(n: int) -> None:
            first = n % 3
            vectors = captures[first : first + 1 + n % 2]  # 1 or 2 templates
            (result,) = gallery.enroll([EnrollItem(target, vectors, True)])
            assert not isinstance(result, Exception), result

        def verify() -> bool:
            try:
                score, compared = gallery.verify(target, probe)
            except NotFound as exc:
                missing.append(str(exc))
                return False
            assert compared in (1, 2) and np.isfinite(score)
            return True

        answered = replace_while_verifying(replace, verify, _REPLACES, _VERIFIERS)
        assert missing == []
        assert answered >= _REPLACES  # the verifiers really ran alongside
        assert gallery.verify(target, probe)[1] == 1 + (_REPLACES - 1) % 2
    finally:
        gallery.close(snapshot=False)
