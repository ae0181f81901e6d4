"""Calibration of the gallery's HNSW beam width (ef), when it is due.

`matcher.calibration` holds the method (probes, ef search); this module
decides when a gallery measures again and keeps the result across restarts.
It is due when the gallery first reaches `calibration_min_templates`, when
it grew or shrank by `calibration_growth`, and once growth settles: when the
ef in force was measured on less than `calibration_coverage` of the live
gallery and its size has stayed within 1 % for `calibration_quiet_s`. So a
bulk load is not measured again and again while it runs, yet the gallery
ends up searched at an ef measured on (nearly) all of it.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import numpy as np
import structlog

from matcher.calibration import DEFAULT_GRID, Calibration, choose_ef, make_probes
from matcher.gallery.memory import ShardMemory
from matcher.gallery.search import exact_top1_chunks, knn
from matcher.store import Store
from tunggal.settings import NodeSettings

_log = structlog.get_logger("matcher.gallery")
_CHUNK = 100
"""HNSW probes per knn call while measuring."""
SETTLED_CHANGE = 0.01
"""A gallery whose size moved by at most this fraction has settled: a trickle
of enrollments does not keep it unsettled, a bulk load does."""
_META_KEY = "calibration"


class CalibrationStopped(Exception):
    """A calibration gave up because its process is stopping; the previous ef stays."""


class Calibrator:
    """Measures HNSW against exact search on one gallery and adopts the ef."""

    def __init__(self, settings: NodeSettings, store: Store, memory: ShardMemory) -> None:
        self._settings = settings
        self._store = store
        self._memory = memory
        self.current: Calibration | None = None
        """The calibration in force (None: the configured ef_search is)."""
        self._settled_size = memory.alive
        self._settled_since = time.monotonic()
        self._restore()

    def _restore(self) -> None:
        """Keep the last calibration across restarts (same ef, same answers)."""
        raw = self._store.get_meta(_META_KEY)
        if raw and self._settings.calibrate:
            data = json.loads(raw)
            data["table"] = {int(k): v for k, v in data.get("table", {}).items()}
            self._adopt(Calibration(**data))

    def _adopt(self, result: Calibration) -> None:
        self._memory.ef = result.ef
        self.current = result

    def due(self) -> bool:
        """Whether to calibrate now. Called periodically: each call also watches
        whether the gallery's size has settled."""
        settings = self._settings
        alive = self._memory.alive
        now = time.monotonic()
        if abs(alive - self._settled_size) > SETTLED_CHANGE * self._settled_size:
            self._settled_size, self._settled_since = alive, now
        if not settings.calibrate or alive < settings.calibration_min_templates:
            return False
        last = self.current
        if last is None:
            return True
        growth = settings.calibration_growth
        if alive >= last.templates * growth or alive * growth <= last.templates:
            return True
        settled = now - self._settled_since >= settings.calibration_quiet_s
        return settled and last.templates < settings.calibration_coverage * alive

    def calibrate(
        self, seed: int | None = None, stop: threading.Event | None = None
    ) -> Calibration:
        """Measure HNSW against exact search on probes from the gallery; adopt the ef.

        Live searches go on meanwhile (with the previous ef). When `stop` is set
        it gives up between two chunks of probes (CalibrationStopped), so a
        stopping node is not held for the minutes a large gallery takes.
        """
        started = time.monotonic()
        settings = self._settings
        memory = self._memory
        rng = np.random.default_rng(seed)

        def check_stop() -> None:
            if stop is not None and stop.is_set():
                raise CalibrationStopped("the node is stopping")

        with memory.lock.shared():
            live = memory.live_labels()
            pick = rng.choice(live, size=min(settings.calibration_probes, len(live)), replace=False)
            sources = memory.owners.names(pick)
            probes = make_probes(memory.matrix.rows(pick), settings.calibration_genuine, rng)
            _log.info("calibration_started", templates=memory.alive, probes=len(probes))
            exact_top: list[str] = []
            for exact_labels, _ in exact_top1_chunks(memory.matrix, probes):
                check_stop()
                exact_top.extend(memory.owners.names(exact_labels))
            templates = memory.alive

        def hnsw_top(ef: int) -> list[str]:
            top: list[str] = []
            with memory.lock.shared():
                k = min(memory.alive, ef)
                for lo in range(0, len(probes), _CHUNK):
                    check_stop()
                    chunk = probes[lo : lo + _CHUNK]
                    found, _ = knn(memory.index, chunk, k, settings.index_threads)
                    best = found[:, 0] if found.shape[1] else np.full(len(chunk), -1)
                    top.extend(memory.owners.names(best))
            return top

        measured = choose_ef(
            sources, exact_top, hnsw_top, DEFAULT_GRID, settings.calibration_target, templates
        )
        result = dataclasses.replace(measured, calibrated_at=time.time())
        self._adopt(result)
        self._store.set_meta(_META_KEY, json.dumps(dataclasses.asdict(result)))
        log = _log.info if result.met else _log.warning
        log(
            "calibrated",
            ef=result.ef,
            hit_rate=round(result.hit_rate, 5),
            exact_hits=result.exact_hits,
            hnsw_hits=result.hnsw_hits,
            probes=result.probes,
            templates=templates,
            met=result.met,
            seconds=round(time.monotonic() - started, 2),
        )
        return result
