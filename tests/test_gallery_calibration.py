"""When a gallery calibrates: after its first templates, after 1.5x growth, and once
growth settles on a gallery the ef in force was measured on too little of.

Real Gallery (SQLite, hnswlib) on small galleries with few probes, so the
decisions are tested, not the measurement (tests/test_calibration.py).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from matcher.gallery import EnrollItem, Gallery
from matcher.gallery.calibration import CalibrationStopped
from tunggal.settings import NodeSettings
from tunggal_tools.synthetic import FaceModel, subject_id

_MODEL = FaceModel(dim=128)
_QUIET_S = 1.0


def _enroll(gallery: Gallery, ids: range) -> None:
    templates = _MODEL.samples(ids, 0)
    results = gallery.enroll(
        [EnrollItem(subject_id(i), templates[j : j + 1], False) for j, i in enumerate(ids)]
    )
    assert not any(isinstance(r, Exception) for r in results)


def test_calibrates_again_once_growth_settles_on_too_little_of_the_gallery(
    tmp_path: Path,
) -> None:
    gallery = Gallery(
        NodeSettings(
            data_dir=tmp_path,
            initial_capacity=2048,
            calibration_min_templates=500,
            calibration_probes=100,
            calibration_quiet_s=_QUIET_S,
        )
    )
    try:
        assert not gallery.calibration_due()  # empty
        _enroll(gallery, range(1000))
        assert gallery.calibration_due()  # the first calibration waits for nothing
        before = time.time()
        gallery.maintain()
        first = gallery.stats()
        assert first.calibrated_templates == 1000 and first.calibration_probes == 100
        assert before <= first.calibrated_at <= time.time()

        # 1.3x growth: under the 1.5x trigger, but the ef in force was measured on
        # 77 % of the gallery. While it keeps growing (2 % a step) it is not measured...
        for lo in range(1000, 1300, 20):
            _enroll(gallery, range(lo, lo + 20))
            assert not gallery.calibration_due()
        # ...and once its size has settled for the quiet period, it is.
        time.sleep(_QUIET_S + 0.1)
        assert gallery.calibration_due()
        gallery.maintain()
        second = gallery.stats()
        assert second.calibrated_templates == 1300
        assert second.calibrated_at > first.calibrated_at

        # Measured on at least 90 % of it: settled or not, nothing to do.
        _enroll(gallery, range(1300, 1400))  # 1300 of 1400: 93 %
        assert not gallery.calibration_due()
        time.sleep(_QUIET_S + 0.1)
        assert not gallery.calibration_due()
    finally:
        gallery.close(snapshot=False)
    reopened = Gallery(gallery.settings)  # the calibration in force survives a restart
    try:
        kept = reopened.stats()
        assert (kept.calibrated_templates, kept.calibrated_at) == (1300, second.calibrated_at)
        assert reopened.ef == second.ef_search
    finally:
        reopened.close(snapshot=False)


def test_a_stopped_calibration_keeps_the_ef_in_force(tmp_path: Path) -> None:
    settings = NodeSettings(
        data_dir=tmp_path, initial_capacity=2048, calibration_min_templates=500,
        calibration_probes=100,
    )  # fmt: skip
    gallery = Gallery(settings)
    try:
        _enroll(gallery, range(1000))
        first = gallery.calibrate(seed=1)
        stop = threading.Event()
        stop.set()
        with pytest.raises(CalibrationStopped):
            gallery.calibrate(seed=2, stop=stop)
        kept = gallery.stats()
        assert gallery.ef == first.ef
        assert kept.calibrated_at == first.calibrated_at
        assert gallery.calibrate(seed=2, stop=threading.Event()).probes == 100  # unset: runs
    finally:
        gallery.close(snapshot=False)
