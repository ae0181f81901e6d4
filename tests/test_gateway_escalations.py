"""The gateway counts the escalations it decides (issue 12, defect 3).

The gateway tells the nodes not to escalate and re-asks every shard exactly
itself when the merged best score falls in the band below the verify
threshold, so the count lives there: ``/metrics``
(tunggal_gateway_identify_calls_total, tunggal_gateway_identify_escalations_total)
and the ``gateway`` field of Operations.Stats. A real gateway process over two
fake nodes whose answers the test chooses.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, gateway_process, terminate
from tests.test_gateway_unit import DIM, GOOD, FakeNode, LoopThread, serve_fake
from tunggal.client import TunggalClient
from tunggal.ops.v1 import ops_pb2 as ops_pb
from tunggal.ops.v1 import ops_pb2_grpc as ops_grpc

pytestmark = pytest.mark.cluster  # starts real Tunggal processes

CALLS = "tunggal_gateway_identify_calls_total"
ESCALATIONS = "tunggal_gateway_identify_escalations_total"


@dataclass
class Rig:
    """A gateway process over fake nodes node-0 and node-1."""

    address: str
    metrics_url: str
    fakes: dict[str, FakeNode]

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    return float(sample.value)
        return 0.0

    def gateway_stats(self) -> ops_pb.GatewayStats:
        with grpc.insecure_channel(self.address) as channel:
            reply = ops_grpc.OperationsStub(channel).Stats(ops_pb.StatsRequest(), timeout=10)
        return reply.gateway

    def counts(self) -> tuple[float, float, int, int]:
        """(calls metric, escalations metric, Stats identify_calls, Stats escalations)."""
        stats = self.gateway_stats()
        return (
            self.metric(CALLS),
            self.metric(ESCALATIONS),
            stats.identify_calls,
            stats.escalations,
        )


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    lt = LoopThread()
    servers: list[grpc.aio.Server] = []
    fakes = {name: FakeNode(name) for name in ("node-0", "node-1")}  # type: ignore[abstract]
    nodes = ",".join(
        f"{name}=127.0.0.1:{lt.run(serve_fake(fake, servers))}" for name, fake in fakes.items()
    )
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNGGAL_")}
    env.update(
        TUNGGAL_DIM=str(DIM),
        TUNGGAL_VERIFY_THRESHOLD="0.5",
        TUNGGAL_GATEWAY_ESCALATE_BAND="0.05",
    )
    log = tmp_path_factory.mktemp("escalations") / "gateway.log"
    argv = [
        sys.executable, "-m", "gateway.server", "--no-auth", "--port", str(port),
        "--nodes", nodes, "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    try:
        with gateway_process(argv, port, log, env) as proc:
            yield Rig(f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", fakes)
            terminate(proc, 20)
    finally:
        for server in servers:
            lt.run(server.stop(0))
        lt.close()


def test_identify_outside_the_band_counts_a_call_and_no_escalation(rig: Rig) -> None:
    n0, n1 = rig.fakes["node-0"], rig.fakes["node-1"]
    calls, escalations, stats_calls, stats_escalations = rig.counts()
    # One shard's best (an impostor) is in the band, but the merged best is a
    # clear match; then a clear non-match: neither is re-asked.
    with TunggalClient(rig.address, timeout=10) as client:
        n0.candidates, n1.candidates = [("imp", 0.47)], [("mate", 0.72)]
        assert client.identify(GOOD, k=2).candidates[0].subject_id == "mate"
        n0.candidates, n1.candidates = [("x", 0.3)], [("y", 0.2)]
        assert client.identify(GOOD, k=2).candidates[0].subject_id == "x"
    assert rig.counts() == (calls + 2, escalations, stats_calls + 2, stats_escalations)


def test_identify_in_the_band_counts_an_escalation(rig: Rig) -> None:
    n0, n1 = rig.fakes["node-0"], rig.fakes["node-1"]
    calls, escalations, stats_calls, stats_escalations = rig.counts()
    with TunggalClient(rig.address, timeout=10) as client:
        n0.candidates, n1.candidates = [("imp", 0.47)], [("other", 0.46)]
        n1.exact_candidates = [("missed-mate", 0.66)]
        result = client.identify(GOOD, k=2)
    assert [c.subject_id for c in result.candidates] == ["missed-mate", "imp"]
    assert rig.counts() == (calls + 1, escalations + 1, stats_calls + 1, stats_escalations + 1)


def test_exact_identify_is_never_escalated(rig: Rig) -> None:
    n0, n1 = rig.fakes["node-0"], rig.fakes["node-1"]
    calls, escalations, stats_calls, stats_escalations = rig.counts()
    with TunggalClient(rig.address, timeout=10) as client:
        n0.candidates, n1.candidates = [("imp", 0.47)], [("other", 0.46)]
        n1.exact_candidates = None
        client.identify(GOOD, k=2, exact=True)
    assert rig.counts() == (calls + 1, escalations, stats_calls + 1, stats_escalations)
