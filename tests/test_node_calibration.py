"""A node process calibrates again once growth settles, and Stats says on what and when.

Small gallery, few probes and a short quiet period (environment variables),
so the node's own maintenance loop makes the decisions within seconds.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import grpc
import pytest

from tests.conftest import NodeProcess, enroll_on_node
from tunggal.node.v1 import node_pb2_grpc as node_grpc
from tunggal.ops.v1 import ops_pb2 as ops_pb
from tunggal_tools.synthetic import FaceModel

pytestmark = pytest.mark.cluster  # starts real Tunggal processes

_MODEL = FaceModel(dim=128)


def _calibrated_on(
    stub: node_grpc.MatcherNodeStub, templates: int, timeout: float = 30.0
) -> ops_pb.NodeStats:
    """Stats once the node's calibration in force was measured on `templates`."""
    deadline = time.monotonic() + timeout
    while True:
        stats = stub.Stats(ops_pb.StatsRequest())
        if stats.calibrated_templates == templates or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def test_stats_show_a_calibration_on_the_settled_gallery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNGGAL_NODE_CALIBRATION_MIN_TEMPLATES", "500")
    monkeypatch.setenv("TUNGGAL_NODE_CALIBRATION_PROBES", "100")
    monkeypatch.setenv("TUNGGAL_NODE_CALIBRATION_QUIET_S", "1")
    node = NodeProcess(tmp_path / "n").start()
    try:
        with grpc.insecure_channel(node.address) as channel:
            stub = node_grpc.MatcherNodeStub(channel)
            started = time.time()
            enroll_on_node(stub, range(600), _MODEL)
            first = _calibrated_on(stub, 600)
            assert first.calibrated_templates == 600 and first.calibration_probes == 100
            assert started <= first.calibrated_at <= time.time()
            # 600 of 800 (75 %), under the 1.5x growth trigger: measured again once
            # the size has settled for a second.
            enroll_on_node(stub, range(600, 800), _MODEL)
            second = _calibrated_on(stub, 800)
            assert second.calibrated_templates == 800 == second.templates
            assert second.calibrated_at > first.calibrated_at
    finally:
        node.kill()


def _events(log: Path) -> list[str]:
    """The `event` of every JSON line of a node's log, in order."""
    events = []
    for line in log.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line).get("event", ""))
    return events


@pytest.mark.slow
def test_sigterm_during_a_calibration_stops_it_and_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Isotropic templates and 20,000 probes: a calibration of many seconds.
    monkeypatch.setenv("TUNGGAL_NODE_CALIBRATION_MIN_TEMPLATES", "20000")
    node = NodeProcess(tmp_path / "n").start()
    try:
        with grpc.insecure_channel(node.address) as channel:
            stub = node_grpc.MatcherNodeStub(channel)
            isotropic = FaceModel(dim=128, structure=0.0)
            for lo in range(0, 20_000, 2000):
                enroll_on_node(stub, range(lo, lo + 2000), isotropic)
        deadline = time.monotonic() + 60
        while "calibration_started" not in _events(node.log) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "calibration_started" in _events(node.log)
        assert node.stop() == 0
    finally:
        node.kill()
    events = _events(node.log)
    after = events[events.index("calibration_started") :]
    assert "calibration_stopped" in after and "calibrated" not in after
    assert after[-1] == "node_stopped"
