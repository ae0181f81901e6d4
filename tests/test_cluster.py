"""The whole cluster as real processes: gateway + 2 nodes on 127.0.0.1.

Calls are made as the all-methods test tenant (tests/tenants.test.toml).
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.conftest import TEST_AUTH, TEST_KEY, TEST_TENANTS, free_port_run
from tunggal.client import TunggalClient
from tunggal_tools.cli import main
from tunggal_tools.localcluster import LocalCluster
from tunggal_tools.synthetic import FaceModel, subject_id

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # 20,000 subjects, restarts, kill -9

MODEL = FaceModel(dim=128, structure=0.7)
N = 20_000
PROBES = 500


def enroll_all(client: TunggalClient, ids: range) -> None:
    for lo in range(ids.start, ids.stop, 1000):
        chunk = list(range(lo, min(ids.stop, lo + 1000)))
        results = client.enroll_batch(
            [subject_id(i) for i in chunk], MODEL.samples(chunk, 0), mode="append", timeout=60
        )
        assert all(r.ok for r in results), results[0]


def settled_template_count(client: TunggalClient) -> int:
    """Templates over all nodes, once the gateway reaches every node again."""
    for _ in range(100):
        rows = client.stats()
        if not any(n.error for n in rows):
            return sum(n.templates for n in rows)
        threading.Event().wait(0.1)
    raise AssertionError(f"gateway still cannot reach: {[n.name for n in rows if n.error]}")


def answers(client: TunggalClient, probes: np.ndarray) -> list[list[str]]:
    """Exact top-5 per probe plus HNSW's rank-1 (lower HNSW ranks depend on the
    ef that background calibration may change)."""
    out = []
    for p in probes:
        exact = [c.subject_id for c in client.identify(p, k=5, exact=True).candidates]
        out.append([*exact, client.identify(p, k=1).candidates[0].subject_id])
    return out


def top1(client: TunggalClient, probes: np.ndarray) -> list[str]:
    out = []
    for p in probes:
        found = client.identify(p, k=5)
        assert not found.partial and found.shards_answered == found.shards_total == 2
        out.append(found.candidates[0].subject_id if found.candidates else "")
    return out


def test_identify_verify_delete_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster = LocalCluster(
        tmp_path / "c", base_port=free_port_run(3), nodes=2, tenants_file=TEST_TENANTS
    ).start()
    try:
        with TunggalClient(cluster.address, timeout=30, metadata=TEST_AUTH) as client:
            enroll_all(client, range(N))
            stats = client.stats()
            assert sum(n.templates for n in stats) == N
            assert all(n.templates > N * 0.4 for n in stats)  # both shards hold a share
            probe_ids = list(range(0, N, N // PROBES))
            probes = MODEL.samples(probe_ids, 1)
            got = top1(client, probes)
            hits = sum(g == subject_id(i) for g, i in zip(got, probe_ids, strict=True))
            assert hits >= 0.99 * len(probe_ids)
            # Exact search finds every mate.
            for p, i in zip(probes[:50], probe_ids[:50], strict=True):
                assert client.identify(p, k=1, exact=True).candidates[0].subject_id == subject_id(i)
            # Verify: genuine pairs match, impostor pairs do not.
            genuine = [
                client.verify(subject_id(i), p)
                for i, p in zip(probe_ids[:100], probes[:100], strict=True)
            ]
            impostor = [
                client.verify(subject_id(i + 1), p)
                for i, p in zip(probe_ids[:100], probes[:100], strict=True)
            ]
            assert sum(v.match for v in genuine) >= 99
            assert sum(v.match for v in impostor) == 0
            # Delete: never returned again, by either search.
            gone = probe_ids[:20]
            for i in gone:
                assert client.delete(subject_id(i))
            for i, p in zip(gone, probes[:20], strict=True):
                for exact in (False, True):
                    ids = [c.subject_id for c in client.identify(p, k=20, exact=exact).candidates]
                    assert subject_id(i) not in ids
                with pytest.raises(grpc.RpcError) as err:
                    client.verify(subject_id(i), p)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
            before = answers(client, probes)
        cluster.stop()
        cluster.start()
        with TunggalClient(cluster.address, timeout=30, metadata=TEST_AUTH) as client:
            after = answers(client, probes)
            assert sum(n.templates for n in client.stats()) == N - len(gone)
        assert after == before
    finally:
        cluster.stop()


def test_node_down_gives_partial_or_unavailable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = LocalCluster(
        tmp_path / "c", base_port=free_port_run(3), nodes=2, tenants_file=TEST_TENANTS
    ).start()
    try:
        with TunggalClient(cluster.address, timeout=10, metadata=TEST_AUTH) as client:
            enroll_all(client, range(2000))
            probe = MODEL.samples([5], 1)[0]
            cluster.kill_node(1)
            found = client.identify(probe, k=3)
            assert (
                found.partial and found.shards_answered == 1 and found.failed_shards == ["node-1"]
            )
            with pytest.raises(grpc.RpcError) as err:
                client.identify(probe, k=3, require_all_shards=True)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "node-1" in (err.value.details() or "")
            down = [n for n in client.stats() if n.error]
            assert [n.name for n in down] == ["node-1"]
            with pytest.raises(SystemExit) as exited:
                main(["stats", "--address", cluster.address, "--key", TEST_KEY])
            assert exited.value.code == 0
            table = capsys.readouterr().out
            assert "node-1" in table and "ERROR" in table
            assert "2 Identify calls" in table  # the partial answer and the refusal
            cluster.start_node(1)
            # The gateway's channel reconnects with backoff (at most 2 s): the
            # first calls after the restart may still find it down.
            for _ in range(50):
                found = client.identify(probe, k=3)
                if not found.partial:
                    break
                threading.Event().wait(0.1)
            assert not found.partial and found.candidates[0].subject_id == subject_id(5)
    finally:
        cluster.stop()


def test_kill_9_node_during_gateway_enrolls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster = LocalCluster(
        tmp_path / "c", base_port=free_port_run(3), nodes=2, tenants_file=TEST_TENANTS
    ).start()
    acked: list[int] = []
    sent: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(offset: int) -> None:
        with TunggalClient(cluster.address, timeout=5, metadata=TEST_AUTH) as client:
            i = offset
            while not stop.is_set():
                with lock:
                    sent.append(i)
                try:
                    client.enroll(subject_id(i), MODEL.samples([i], 0), request_id=f"r{i}")
                    with lock:
                        acked.append(i)
                except grpc.RpcError:
                    pass  # the owning node is down: not acknowledged
                i += 4

    threads = [threading.Thread(target=writer, args=(o,)) for o in range(4)]
    try:
        for t in threads:
            t.start()
        while len(acked) < 400:
            threading.Event().wait(0.05)
        cluster.kill_node(0)
        while len(acked) < 700:  # node-1's subjects keep being acknowledged
            threading.Event().wait(0.05)
        stop.set()
        for t in threads:
            t.join()
        cluster.start_node(0)
        with TunggalClient(cluster.address, timeout=30, metadata=TEST_AUTH) as client:
            stored = settled_template_count(client)
            unacked = set(sent) - set(acked)
            assert len(acked) <= stored <= len(acked) + len(unacked)
            for i, p in zip(acked, MODEL.samples(acked, 1), strict=True):
                assert client.get_subject(subject_id(i)).template_count == 1
                assert client.identify(p, k=1).candidates[0].subject_id == subject_id(i)
    finally:
        stop.set()
        cluster.stop()
