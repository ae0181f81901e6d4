"""A real matcher node process: writes, reads, bad input, restarts, crashes."""

from __future__ import annotations

import platform
import threading
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from matcher.memtrim import release_free_memory
from tests.conftest import NodeProcess, free_port
from tunggal.node.v1 import node_pb2 as node_pb
from tunggal.node.v1 import node_pb2_grpc as node_grpc
from tunggal.ops.v1 import ops_pb2 as ops_pb
from tunggal.templates import encode_template
from tunggal.v1 import tunggal_pb2 as pb
from tunggal_tools.synthetic import FaceModel, subject_id

pytestmark = pytest.mark.cluster  # starts real Tunggal processes

MODEL = FaceModel(dim=128)
APPEND = pb.ENROLL_MODE_APPEND
REPLACE = pb.ENROLL_MODE_REPLACE


def enroll_req(
    ident: int,
    mode: pb.EnrollMode.ValueType = APPEND,
    request_id: str = "",
    capture: int = 0,
    vec: np.ndarray | None = None,
) -> pb.EnrollRequest:
    """One template of identity `ident` (`vec` when already generated)."""
    if vec is None:
        vec = MODEL.samples([ident], capture)[0]
    return pb.EnrollRequest(
        subject_id=subject_id(ident),
        templates=[encode_template(vec)],
        mode=mode,
        request_id=request_id,
    )


def enroll_range(stub: node_grpc.MatcherNodeStub, start: int, stop: int) -> None:
    for lo in range(start, stop, 1000):
        ids = range(lo, min(stop, lo + 1000))
        items = [enroll_req(i, vec=v) for i, v in zip(ids, MODEL.samples(ids, 0), strict=True)]
        reply = stub.EnrollBatch(pb.EnrollBatchRequest(items=items))
        assert all(r.code == 0 for r in reply.results), reply.results[0]


def search(
    stub: node_grpc.MatcherNodeStub, vec: np.ndarray, k: int = 5, exact: bool = False
) -> node_pb.NodeSearchResponse:
    return stub.Search(
        node_pb.NodeSearchRequest(probe=encode_template(vec), k=k, min_score=-1.0, exact=exact)
    )


def answers(stub: node_grpc.MatcherNodeStub, probes: np.ndarray) -> list[list[str]]:
    """Exact top-5 per probe (HNSW answers depend on ef, which background
    calibration may change between two calls)."""
    out = []
    for p in probes:
        exact = [c.subject_id for c in search(stub, p, exact=True).candidates]
        out.append(exact)
    return out


def stats(stub: node_grpc.MatcherNodeStub) -> ops_pb.NodeStats:
    return stub.Stats(ops_pb.StatsRequest())


def test_enroll_search_verify_delete(node_stub: node_grpc.MatcherNodeStub) -> None:
    enroll_range(node_stub, 0, 3000)
    probes = MODEL.samples(range(200), 1)
    for i in range(200):
        top = search(node_stub, probes[i]).candidates[0]
        assert top.subject_id == subject_id(i)
        assert 0.5 < top.score < 0.9
    genuine = node_stub.Verify(
        pb.VerifyRequest(
            subject_id=subject_id(3), probe=pb.Probe(template=encode_template(probes[3]))
        )
    )
    assert genuine.match and genuine.threshold_used == pytest.approx(0.50)
    impostor = node_stub.Verify(
        pb.VerifyRequest(
            subject_id=subject_id(4), probe=pb.Probe(template=encode_template(probes[3]))
        )
    )
    assert not impostor.match and impostor.score < 0.5
    gone = node_stub.Delete(pb.DeleteRequest(subject_id=subject_id(3)))
    assert gone.deleted and gone.templates_removed == 1
    for exact in (False, True):
        ids = [c.subject_id for c in search(node_stub, probes[3], k=50, exact=exact).candidates]
        assert subject_id(3) not in ids
    with pytest.raises(grpc.RpcError) as err:
        node_stub.Verify(
            pb.VerifyRequest(
                subject_id=subject_id(3), probe=pb.Probe(template=encode_template(probes[3]))
            )
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not node_stub.Delete(pb.DeleteRequest(subject_id=subject_id(3))).deleted
    assert stats(node_stub).templates == 2999


def test_append_replace_and_idempotent_retry(node_stub: node_grpc.MatcherNodeStub) -> None:
    first = node_stub.Enroll(enroll_req(1, APPEND, "req-1"))
    again = node_stub.Enroll(enroll_req(1, APPEND, "req-1"))
    assert (first.template_count, first.replayed) == (1, False)
    assert (again.template_count, again.replayed) == (1, True)
    with pytest.raises(grpc.RpcError) as err:
        node_stub.Enroll(enroll_req(1, APPEND, "req-1", capture=2))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "request_id" in (err.value.details() or "")
    assert node_stub.Enroll(enroll_req(1, APPEND, capture=1)).template_count == 2
    assert node_stub.GetSubject(pb.GetSubjectRequest(subject_id=subject_id(1))).template_count == 2
    assert node_stub.Enroll(enroll_req(1, REPLACE, capture=3)).template_count == 1
    subject = node_stub.GetSubject(pb.GetSubjectRequest(subject_id=subject_id(1)))
    assert subject.template_count == 1 and subject.updated_at >= subject.created_at
    assert stats(node_stub).templates == 1


def _bad(stub: node_grpc.MatcherNodeStub, call: str, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, call)(request)
    return err.value


def test_bad_input_is_rejected_and_changes_nothing(node_stub: node_grpc.MatcherNodeStub) -> None:
    enroll_range(node_stub, 0, 10)
    before = stats(node_stub)
    good = encode_template(MODEL.samples([0], 1)[0])
    nan = np.ones(128, dtype=np.float32)
    nan[5] = np.nan
    inf = np.ones(128, dtype=np.float32)
    inf[0] = np.inf
    cases = {
        "dim": pb.Template(data=good.data[:256], dim=64),
        "data": pb.Template(data=good.data[:-4], dim=128),
        "NaN": encode_template(nan),
        "infinite": encode_template(inf),
        "all-zero": encode_template(np.zeros(128, dtype=np.float32)),
    }
    for word, template in cases.items():
        for call, request in [
            ("Enroll", pb.EnrollRequest(subject_id="x1", templates=[template], mode=APPEND)),
            ("Search", node_pb.NodeSearchRequest(probe=template, k=5, min_score=-1)),
            (
                "Verify",
                pb.VerifyRequest(subject_id=subject_id(0), probe=pb.Probe(template=template)),
            ),
        ]:
            err = _bad(node_stub, call, request)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (call, word)
            assert word in (err.details() or ""), (call, word, err.details())
    for request, word in [
        (pb.EnrollRequest(subject_id="x1", templates=[], mode=APPEND), "templates is empty"),
        (pb.EnrollRequest(subject_id="x1", templates=[good]), "mode"),
        (pb.EnrollRequest(subject_id="", templates=[good], mode=APPEND), "subject_id is empty"),
        (pb.EnrollRequest(subject_id="a b/c", templates=[good], mode=APPEND), "malformed"),
        (pb.EnrollRequest(subject_id="x" * 65, templates=[good], mode=APPEND), "malformed"),
        (pb.EnrollRequest(subject_id="x1", templates=[good] * 33, mode=APPEND), "at most 32"),
    ]:
        err = _bad(node_stub, "Enroll", request)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and word in (err.details() or "")
    for k in (0, 101):
        err = _bad(node_stub, "Search", node_pb.NodeSearchRequest(probe=good, k=k, min_score=-1))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "k is" in (err.details() or "")
    err = _bad(node_stub, "Verify", pb.VerifyRequest(subject_id=subject_id(0), probe=pb.Probe()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "probe" in (err.details() or "")
    err = _bad(
        node_stub, "Verify", pb.VerifyRequest(subject_id="nobody", probe=pb.Probe(template=good))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = _bad(node_stub, "GetSubject", pb.GetSubjectRequest(subject_id="nobody"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = _bad(node_stub, "EnrollBatch", pb.EnrollBatchRequest(items=[]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Oversize message: refused by gRPC's limit before any work.
    huge = pb.EnrollRequest(
        subject_id="x1", templates=[pb.Template(data=b"\0" * (17 * 1024 * 1024), dim=128)]
    )
    assert _bad(node_stub, "Enroll", huge).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A batch: bad items fail alone, good ones land.
    reply = node_stub.EnrollBatch(
        pb.EnrollBatchRequest(
            items=[
                enroll_req(100),
                pb.EnrollRequest(subject_id="x2", templates=[cases["NaN"]], mode=APPEND),
            ]
        )
    )
    assert [r.code for r in reply.results] == [0, grpc.StatusCode.INVALID_ARGUMENT.value[0]]
    after = stats(node_stub)
    assert after.templates == before.templates + 1
    assert search(node_stub, MODEL.samples([0], 1)[0]).candidates[0].subject_id == subject_id(0)


def test_search_batch_answers_like_single_searches(node_stub: node_grpc.MatcherNodeStub) -> None:
    enroll_range(node_stub, 0, 3000)
    probes = MODEL.samples(range(40), 1)
    searches = [
        node_pb.NodeSearchRequest(
            probe=encode_template(p),
            k=1 + i % 7,
            min_score=-1.0 if i % 3 else 0.2,
            exact=i % 2 == 0,
        )
        for i, p in enumerate(probes)
    ]
    reply = node_stub.SearchBatch(node_pb.NodeSearchBatchRequest(searches=searches))
    assert len(reply.results) == len(searches)
    for i, (search_request, result) in enumerate(zip(searches, reply.results, strict=True)):
        assert result.code == 0, result.message
        got = result.response
        assert got.templates == 3000
        assert got.candidates[0].subject_id == subject_id(i)
        assert len(got.candidates) <= search_request.k
        assert all(c.score >= search_request.min_score for c in got.candidates)
        exact = node_stub.Search(
            node_pb.NodeSearchRequest(
                probe=search_request.probe,
                k=search_request.k,
                min_score=search_request.min_score,
                exact=True,
            )
        )
        exact_scores = {c.subject_id: c.score for c in exact.candidates}
        if search_request.exact:
            assert got.ef == 0
            assert [c.subject_id for c in got.candidates] == list(exact_scores)
        for c in got.candidates:  # HNSW candidates carry their exact scores
            if c.subject_id in exact_scores:
                assert c.score == pytest.approx(exact_scores[c.subject_id], abs=1e-5)


def test_search_batch_bad_input(node_stub: node_grpc.MatcherNodeStub) -> None:
    enroll_range(node_stub, 0, 50)
    good = encode_template(MODEL.samples([3], 1)[0])
    nan = np.ones(128, dtype=np.float32)
    nan[1] = np.nan
    err = _bad(node_stub, "SearchBatch", node_pb.NodeSearchBatchRequest())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "searches is empty" in (err.details() or "")
    many = [node_pb.NodeSearchRequest(probe=good, k=1, min_score=-1)] * 257
    err = _bad(node_stub, "SearchBatch", node_pb.NodeSearchBatchRequest(searches=many))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 256" in (err.details() or "")
    reply = node_stub.SearchBatch(
        node_pb.NodeSearchBatchRequest(
            searches=[
                node_pb.NodeSearchRequest(probe=good, k=3, min_score=-1),
                node_pb.NodeSearchRequest(probe=encode_template(nan), k=3, min_score=-1),
                node_pb.NodeSearchRequest(probe=good, k=0, min_score=-1),
                node_pb.NodeSearchRequest(probe=good, k=3, min_score=float("nan")),
            ]
        )
    )
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [r.code for r in reply.results] == [0, invalid, invalid, invalid]
    assert reply.results[0].response.candidates[0].subject_id == subject_id(3)
    assert reply.results[1].message.startswith("searches[1].probe.template")
    assert "k is" in reply.results[2].message
    assert reply.results[3].message.startswith("searches[3].min_score")
    assert stats(node_stub).templates == 50


def test_restart_keeps_everything(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n").start()
    probes = MODEL.samples(range(100), 1)
    try:
        with grpc.insecure_channel(node.address) as ch:
            stub = node_grpc.MatcherNodeStub(ch)
            enroll_range(stub, 0, 2000)
            stub.Delete(pb.DeleteRequest(subject_id=subject_id(7)))
            before = answers(stub, probes)
        assert node.stop() == 0  # graceful: drains and snapshots
        node.start()
        with grpc.insecure_channel(node.address) as ch:
            stub = node_grpc.MatcherNodeStub(ch)
            after = answers(stub, probes)
            s = stats(stub)
        assert after == before
        assert s.templates == 1999 and s.snapshot_seq == s.last_seq
    finally:
        node.kill()


@pytest.mark.slow
def test_kill_9_during_enrolls_loses_no_acknowledged_template(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n").start()
    acked: list[int] = []
    sent: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(offset: int) -> None:
        with grpc.insecure_channel(node.address) as ch:
            stub = node_grpc.MatcherNodeStub(ch)
            i = offset
            while not stop.is_set():
                with lock:
                    sent.append(i)
                try:
                    stub.Enroll(enroll_req(i, request_id=f"r{i}"), timeout=5)
                except grpc.RpcError:
                    return
                with lock:
                    acked.append(i)
                i += 4

    threads = [threading.Thread(target=writer, args=(o,)) for o in range(4)]
    for t in threads:
        t.start()
    while len(acked) < 600:
        threading.Event().wait(0.05)
    node.kill()  # SIGKILL mid-stream
    stop.set()
    for t in threads:
        t.join()
    node.start()
    try:
        with grpc.insecure_channel(node.address) as ch:
            stub = node_grpc.MatcherNodeStub(ch)
            stored = stats(stub).templates
            in_flight = set(sent) - set(acked)
            assert len(acked) <= stored <= len(acked) + len(in_flight)
            probes = MODEL.samples(acked, 1)
            for ident, probe in zip(acked, probes, strict=True):
                got = stub.GetSubject(pb.GetSubjectRequest(subject_id=subject_id(ident)))
                assert got.template_count == 1
                top = search(stub, probe, k=1).candidates[0]
                assert top.subject_id == subject_id(ident)
            # A retried in-flight request is applied once at most.
            for ident in in_flight:
                stub.Enroll(enroll_req(ident, request_id=f"r{ident}"))
            assert stats(stub).templates == len(acked) + len(in_flight)
    finally:
        node.kill()


def test_torn_wal_tail_and_corrupt_snapshot_are_survived(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n").start()
    probes = MODEL.samples(range(50), 1)
    try:
        with grpc.insecure_channel(node.address) as ch:
            stub = node_grpc.MatcherNodeStub(ch)
            enroll_range(stub, 0, 500)
            stub.Snapshot(node_pb.SnapshotRequest())
            enroll_range(stub, 500, 800)
            before = answers(stub, probes)
        node.kill()
        data = tmp_path / "n"
        # A torn, half-written last WAL frame: garbage after the last commit.
        with (data / "gallery.sqlite-wal").open("ab") as wal:
            wal.write(b"\x37\x7f\x06\x82" + b"\xaa" * 1000)
        # And a corrupt newest snapshot: start-up must not trust it.
        snap = max((data / "snapshots").iterdir())
        with (snap / "index.bin").open("r+b") as fh:
            fh.seek(100)
            fh.write(b"\xff" * 64)
        node.start()
        with grpc.insecure_channel(node.address) as ch:
            stub = node_grpc.MatcherNodeStub(ch)
            after = answers(stub, probes)
            assert stats(stub).templates == 800
        assert after == before
    finally:
        node.kill()


def test_metrics_endpoint_reports_gallery_and_calls(tmp_path: Path) -> None:
    port = free_port()
    node = NodeProcess(tmp_path / "n", extra=["--metrics-port", str(port)]).start()
    try:
        with grpc.insecure_channel(node.address) as ch:
            stub = node_grpc.MatcherNodeStub(ch)
            enroll_range(stub, 0, 50)
            search(stub, MODEL.samples([1], 1)[0])
            with pytest.raises(grpc.RpcError):
                stub.GetSubject(pb.GetSubjectRequest(subject_id="nobody"))
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        body = text.decode()
        assert 'tunggal_node_templates{node="node-0"} 50.0' in body
        assert 'tunggal_node_ef_search{node="node-0"}' in body
        assert 'tunggal_node_calibrated_timestamp_seconds{node="node-0"} 0.0' in body  # too few
        assert (
            'tunggal_node_call_seconds_count{code="OK",method="Search",node="node-0"} 1.0' in body
        )
        assert 'method="GetSubject",node="node-0"} 1.0' in body and "NOT_FOUND" in body
    finally:
        node.kill()


def test_free_heap_memory_goes_back_to_the_os() -> None:
    # glibc can trim its heap; other C libraries make it a no-op that says so.
    assert release_free_memory() == (platform.libc_ver()[0] == "glibc")
