"""The gateway in-process, against fake in-process nodes and unreachable ports.

No real matcher nodes: checks gateway-side validation (INVALID_ARGUMENT before
anything is forwarded), routing, fan-out/merge, partial answers, deadlines,
status pass-through, health, reflection and SIGTERM handling.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
import grpc.aio
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.app import GatewayServer, serve, server_options
from shard.shardmap import Node
from tests.conftest import ROOT, free_port, gateway_process, terminate
from tunggal.client import Candidate, TunggalClient
from tunggal.node.v1 import node_pb2 as node_pb
from tunggal.node.v1 import node_pb2_grpc as node_grpc
from tunggal.ops.v1 import ops_pb2 as ops_pb
from tunggal.settings import GatewaySettings
from tunggal.templates import encode_template
from tunggal.v1 import tunggal_pb2 as pb
from tunggal.v1 import tunggal_pb2_grpc as pb_grpc

DIM = 8
T = TypeVar("T")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def unit(i: int = 0) -> np.ndarray:
    vec = np.zeros(DIM, dtype=np.float32)
    vec[i % DIM] = 1.0
    return vec


def settings(**kw: Any) -> GatewaySettings:
    base: dict[str, Any] = {
        "dim": DIM,
        "max_k": 50,
        "max_templates_per_enroll": 4,
        "max_batch_subjects": 10,
        "default_deadline_s": 3.0,
        "deadline_margin_s": 0.1,
        "grace_s": 0.0,
    }
    return GatewaySettings(**{**base, **kw})


class LoopThread:
    """An asyncio loop in a background thread, so sync clients can call into it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class FakeNode(node_grpc.MatcherNodeServicer):
    """A MatcherNode with canned answers; `fail` maps subject ids to (code, message)."""

    def __init__(self, name: str, candidates: list[tuple[str, float]] | None = None) -> None:
        self.name = name
        self.candidates = candidates or []
        self.delay = 0.0
        self.fail: dict[str, tuple[grpc.StatusCode, str]] = {}
        self.trailers: tuple[tuple[str, str], ...] = ()
        self.calls: list[tuple[str, Any]] = []
        self.batches: list[int] = []  # size of each SearchBatch received
        self.exact_candidates: list[tuple[str, float]] | None = None  # else `candidates`
        self.fail_k: dict[int, tuple[grpc.StatusCode, str]] = {}  # searches with this k fail

    async def _maybe_fail(self, subject_id: str, context: Any) -> None:
        if subject_id in self.fail:
            code, message = self.fail[subject_id]
            await context.abort(code, message, trailing_metadata=self.trailers)

    async def Enroll(self, request: pb.EnrollRequest, context: Any) -> pb.EnrollResponse:
        self.calls.append(("Enroll", request))
        await self._maybe_fail(request.subject_id, context)
        return pb.EnrollResponse(
            subject_id=request.subject_id, template_count=len(request.templates), shard="x"
        )

    async def EnrollBatch(
        self, request: pb.EnrollBatchRequest, context: Any
    ) -> pb.EnrollBatchResponse:
        self.calls.append(("EnrollBatch", request))
        await asyncio.sleep(self.delay)
        results = []
        for item in request.items:
            if item.subject_id in self.fail:
                code, message = self.fail[item.subject_id]
                results.append(pb.EnrollBatchItemResult(code=code.value[0], message=message))
            else:
                results.append(
                    pb.EnrollBatchItemResult(
                        response=pb.EnrollResponse(subject_id=item.subject_id, template_count=1)
                    )
                )
        return pb.EnrollBatchResponse(results=results)

    async def Delete(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        self.calls.append(("Delete", request))
        return pb.DeleteResponse(subject_id=request.subject_id, deleted=True, templates_removed=2)

    async def Verify(self, request: pb.VerifyRequest, context: Any) -> pb.VerifyResponse:
        self.calls.append(("Verify", request))
        await self._maybe_fail(request.subject_id, context)
        threshold = request.threshold if request.HasField("threshold") else 0.4
        return pb.VerifyResponse(
            subject_id=request.subject_id,
            score=0.75,
            match=threshold <= 0.75,
            threshold_used=threshold,
            templates_compared=3,
        )

    def _answer(self, request: node_pb.NodeSearchRequest) -> node_pb.NodeSearchResponse:
        pool = self.candidates
        if request.exact and self.exact_candidates is not None:
            pool = self.exact_candidates
        rows = [(s, v) for s, v in pool if v >= request.min_score][: request.k]
        return node_pb.NodeSearchResponse(
            candidates=[pb.Candidate(subject_id=s, score=v, shard=self.name) for s, v in rows]
        )

    async def Search(
        self, request: node_pb.NodeSearchRequest, context: Any
    ) -> node_pb.NodeSearchResponse:
        self.calls.append(("Search", request))
        await asyncio.sleep(self.delay)
        return self._answer(request)

    async def SearchBatch(
        self, request: node_pb.NodeSearchBatchRequest, context: Any
    ) -> node_pb.NodeSearchBatchResponse:
        self.batches.append(len(request.searches))
        self.calls.extend(("Search", search) for search in request.searches)
        await asyncio.sleep(self.delay)
        results = []
        for search in request.searches:
            if search.k in self.fail_k:
                code, message = self.fail_k[search.k]
                results.append(node_pb.NodeSearchBatchResult(code=code.value[0], message=message))
            else:
                results.append(node_pb.NodeSearchBatchResult(response=self._answer(search)))
        return node_pb.NodeSearchBatchResponse(results=results)

    async def GetSubject(self, request: pb.GetSubjectRequest, context: Any) -> pb.Subject:
        self.calls.append(("GetSubject", request))
        await self._maybe_fail(request.subject_id, context)
        return pb.Subject(subject_id=request.subject_id, template_count=2, created_at=1.0)

    async def Stats(self, request: ops_pb.StatsRequest, context: Any) -> ops_pb.NodeStats:
        return ops_pb.NodeStats(name=self.name, serving=True, subjects=5, templates=7, dim=DIM)


async def serve_fake(fake: FakeNode, servers: list[grpc.aio.Server]) -> int:
    """Serve `fake` on a free port of 127.0.0.1 (run on the loop); its port.

    The server is added to `servers`, for the caller to stop.
    """
    server = grpc.aio.server()
    node_grpc.add_MatcherNodeServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    servers.append(server)
    return port


class Cluster:
    """A gateway plus its fake nodes, all on one background loop."""

    def __init__(self, lt: LoopThread, gateway: GatewayServer, fakes: dict[str, FakeNode]):
        self.lt = lt
        self.gateway = gateway
        self.fakes = fakes
        self.address = gateway.address
        self.shard_map = gateway.fanout.shard_map

    def client(self, **kw: Any) -> TunggalClient:
        return TunggalClient(self.address, **kw)

    def owned_by(self, node_name: str, prefix: str = "subj") -> str:
        """A subject id that `node_name` owns."""
        for i in range(10_000):
            sid = f"{prefix}-{i}"
            if self.shard_map.owner(sid).name == node_name:
                return sid
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def lt() -> Iterator[LoopThread]:
    loop_thread = LoopThread()
    yield loop_thread
    loop_thread.close()


@pytest.fixture
def make_cluster(lt: LoopThread) -> Iterator[Callable[..., Cluster]]:
    """make_cluster(live=["node-0"], dead=["node-1"], **settings) -> Cluster."""
    servers: list[grpc.aio.Server] = []
    gateways: list[GatewayServer] = []

    def make(
        live: list[str] | None = None,
        dead: list[str] | None = None,
        interceptors: tuple[Any, ...] = (),
        **kw: Any,
    ) -> Cluster:
        nodes: list[Node] = []
        fakes: dict[str, FakeNode] = {}
        for name in live or []:
            fake = FakeNode(name)  # type: ignore[abstract]  # base is not abstract at runtime
            fakes[name] = fake
            nodes.append(Node(name, f"127.0.0.1:{lt.run(serve_fake(fake, servers))}"))
        nodes += [Node(name, f"127.0.0.1:{free_port()}") for name in dead or []]
        gateway = lt.run(serve(settings(**kw), interceptors, port=0, nodes=nodes))
        gateways.append(gateway)
        return Cluster(lt, gateway, fakes)

    yield make
    for gateway in gateways:
        lt.run(gateway.stop(0))
    for server in servers:
        lt.run(server.stop(0))


@pytest.fixture
def down(make_cluster: Callable[..., Cluster]) -> Cluster:
    """A gateway whose two nodes are unreachable."""
    return make_cluster(dead=["node-0", "node-1"])


def status_of(fn: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    err: Any = info.value
    return err.code(), err.details()


def tmpl(vec: Any) -> pb.Template:
    return encode_template(np.asarray(vec, dtype=np.float32))


def probe(vec: Any) -> pb.Probe:
    return pb.Probe(template=tmpl(vec))


GOOD = unit(0)
NAN = np.full(DIM, np.nan, dtype=np.float32)
ZERO = np.zeros(DIM, dtype=np.float32)
ENROLL_OK: dict[str, Any] = {
    "subject_id": "s-1",
    "templates": [tmpl(GOOD)],
    "mode": pb.ENROLL_MODE_APPEND,
}

BAD_REQUESTS: list[tuple[str, str, Any, str]] = [
    ("identify wrong dim", "Identify", pb.IdentifyRequest(probe=probe(np.ones(4)), k=1), "dim"),
    ("identify nan", "Identify", pb.IdentifyRequest(probe=probe(NAN), k=1), "NaN"),
    ("identify zero", "Identify", pb.IdentifyRequest(probe=probe(ZERO), k=1), "all-zero"),
    ("identify no probe", "Identify", pb.IdentifyRequest(k=1), "probe is empty"),
    (
        "identify short data",
        "Identify",
        pb.IdentifyRequest(probe=pb.Probe(template=pb.Template(data=b"\0" * 4, dim=DIM)), k=1),
        "probe.template.data",
    ),
    ("identify k=0", "Identify", pb.IdentifyRequest(probe=probe(GOOD), k=0), "k is 0"),
    ("identify k>max", "Identify", pb.IdentifyRequest(probe=probe(GOOD), k=51), "k is 51"),
    (
        "identify min_score",
        "Identify",
        pb.IdentifyRequest(probe=probe(GOOD), k=1, min_score=1.5),
        "min_score",
    ),
    (
        "verify bad id",
        "Verify",
        pb.VerifyRequest(subject_id="a b", probe=probe(GOOD)),
        "subject_id",
    ),
    ("verify empty id", "Verify", pb.VerifyRequest(probe=probe(GOOD)), "subject_id is empty"),
    ("verify no probe", "Verify", pb.VerifyRequest(subject_id="s-1"), "probe is empty"),
    (
        "verify threshold",
        "Verify",
        pb.VerifyRequest(subject_id="s-1", probe=probe(GOOD), threshold=-1.0),
        "threshold",
    ),
    (
        "enroll mode unset",
        "Enroll",
        pb.EnrollRequest(subject_id="s-1", templates=[tmpl(GOOD)]),
        "mode",
    ),
    (
        "enroll no templates",
        "Enroll",
        pb.EnrollRequest(subject_id="s-1", mode=pb.ENROLL_MODE_APPEND),
        "templates is empty",
    ),
    (
        "enroll too many templates",
        "Enroll",
        pb.EnrollRequest(subject_id="s-1", templates=[tmpl(GOOD)] * 5, mode=pb.ENROLL_MODE_APPEND),
        "at most 4",
    ),
    (
        "enroll nan template",
        "Enroll",
        pb.EnrollRequest(
            subject_id="s-1", templates=[tmpl(GOOD), tmpl(NAN)], mode=pb.ENROLL_MODE_APPEND
        ),
        "templates[1].data",
    ),
    (
        "enroll bad id",
        "Enroll",
        pb.EnrollRequest(**{**ENROLL_OK, "subject_id": "x" * 65}),
        "subject_id",
    ),
    (
        "enroll long request id",
        "Enroll",
        pb.EnrollRequest(**ENROLL_OK, request_id="r" * 129),
        "request_id",
    ),
    ("batch empty", "EnrollBatch", pb.EnrollBatchRequest(), "items is empty"),
    (
        "batch too big",
        "EnrollBatch",
        pb.EnrollBatchRequest(items=[pb.EnrollRequest(**ENROLL_OK)] * 11),
        "at most 10",
    ),
    ("delete bad id", "Delete", pb.DeleteRequest(subject_id="é"), "subject_id"),
    ("get bad id", "GetSubject", pb.GetSubjectRequest(subject_id=""), "subject_id is empty"),
]


@pytest.mark.parametrize(
    ("method", "request_", "needle"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_input_is_rejected_at_the_gateway(
    down: Cluster, method: str, request_: Any, needle: str
) -> None:
    """Nodes are down, so INVALID_ARGUMENT proves the gateway checked first."""
    with grpc.insecure_channel(down.address) as channel:
        stub = pb_grpc.MatcherStub(channel)
        code, details = status_of(lambda: getattr(stub, method)(request_, timeout=5))
    assert code == INVALID, details
    assert needle in details


def test_all_nodes_down(down: Cluster) -> None:
    with down.client(timeout=5) as client:
        code, details = status_of(lambda: client.identify(GOOD, k=3))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "node-0" in details and "node-1" in details

        sid = down.owned_by("node-1")
        code, details = status_of(lambda: client.enroll(sid, GOOD))
        assert code == grpc.StatusCode.UNAVAILABLE
        node1 = down.shard_map.owner(sid)
        assert details.startswith(f"shard node-1 ({node1.address}) unavailable: ")

        for call in (
            lambda: client.verify(sid, GOOD),
            lambda: client.delete(sid),
            lambda: client.get_subject(sid),
        ):
            assert status_of(call)[0] == grpc.StatusCode.UNAVAILABLE

        rows = client.stats()
        assert [r.name for r in rows] == ["node-0", "node-1"]
        assert all(not r.serving and "unavailable" in r.error for r in rows)

        items = client.enroll_batch(["a-1", "bad id", "a-2"], np.stack([GOOD, GOOD, GOOD]))
        assert [i.code for i in items] == [
            grpc.StatusCode.UNAVAILABLE,
            INVALID,
            grpc.StatusCode.UNAVAILABLE,
        ]
        assert items[1].message.startswith("items[1].subject_id")
        assert "unavailable" in items[0].message


def test_identify_merges_across_shards(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(live=["node-0", "node-1"])
    cluster.fakes["node-0"].candidates = [("a", 0.9), ("c", 0.5), ("e", 0.1)]
    cluster.fakes["node-1"].candidates = [("b", 0.7), ("d", 0.5), ("f", 0.2)]
    with cluster.client() as client:
        result = client.identify(GOOD, k=4)
        assert result.candidates == [
            Candidate("a", cast(float, pytest.approx(0.9)), "node-0"),
            Candidate("b", cast(float, pytest.approx(0.7)), "node-1"),
            Candidate("c", 0.5, "node-0"),
            Candidate("d", 0.5, "node-1"),
        ]
        assert not result.partial
        assert (result.shards_answered, result.shards_total) == (2, 2)
        assert result.failed_shards == []

        floor = client.identify(GOOD, k=10, min_score=0.4, exact=True)
        assert [c.subject_id for c in floor.candidates] == ["a", "b", "c", "d"]
    sent = cluster.fakes["node-1"].calls[-1][1]
    assert sent.k == 10 and sent.exact and sent.min_score == pytest.approx(0.4)
    assert cluster.fakes["node-1"].calls[0][1].min_score == -1.0


def test_identify_partial_and_require_all(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(live=["node-0"], dead=["node-1"])
    cluster.fakes["node-0"].candidates = [("a", 0.9)]
    with cluster.client() as client:
        result = client.identify(GOOD, k=5)
        assert result.partial
        assert result.failed_shards == ["node-1"]
        assert (result.shards_answered, result.shards_total) == (1, 2)
        assert result.candidates == [Candidate("a", cast(float, pytest.approx(0.9)), "node-0")]

        code, details = status_of(lambda: client.identify(GOOD, k=5, require_all_shards=True))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "node-1" in details and "require_all_shards" in details


def test_identify_deadlines(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(live=["node-0", "node-1"], default_deadline_s=0.5)
    cluster.fakes["node-0"].candidates = [("a", 0.9)]
    cluster.fakes["node-1"].candidates = [("b", 0.8)]
    cluster.fakes["node-1"].delay = 2.0
    with cluster.client() as client:
        started = time.monotonic()
        result = client.identify(GOOD, k=5, timeout=1.0)  # caller's deadline
        assert time.monotonic() - started < 1.0
        assert result.partial and result.failed_shards == ["node-1"]

    with cluster.client(timeout=None) as client:  # no deadline: default_deadline_s applies
        started = time.monotonic()
        result = client.identify(GOOD, k=5)
        assert time.monotonic() - started < 0.9
        assert result.partial and result.failed_shards == ["node-1"]

        cluster.fakes["node-0"].delay = 2.0
        code, details = status_of(lambda: client.identify(GOOD, k=5, timeout=1.0))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no shard answered" in details


def test_identify_searches_are_batched_per_node(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(live=["node-0", "node-1"], search_batch=4, search_batches_in_flight=1)
    for name, fake in cluster.fakes.items():
        fake.candidates = [(f"s-{name}", 0.9)]
        fake.delay = 0.3
    with cluster.client() as client, ThreadPoolExecutor(9) as pool:
        results = list(pool.map(lambda _: client.identify(GOOD, k=3), range(9)))
    for result in results:
        assert [c.subject_id for c in result.candidates] == ["s-node-0", "s-node-1"]
        assert not result.partial
    for fake in cluster.fakes.values():
        assert sum(fake.batches) == 9  # every search sent once
        assert max(fake.batches) <= 4  # search_batch
        assert len(fake.batches) < 9  # searches that waited went together


def test_identify_batch_item_errors_keep_their_code(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(live=["node-0", "node-1"])
    for fake in cluster.fakes.values():
        fake.candidates = [(f"s-{fake.name}", 0.5)]
        fake.fail_k[7] = (grpc.StatusCode.INVALID_ARGUMENT, "searches[0].probe.template: bad")
    cluster.fakes["node-1"].fail_k[8] = (grpc.StatusCode.UNAVAILABLE, "node-1 is loading")
    with cluster.client() as client:
        code, details = status_of(lambda: client.identify(GOOD, k=7))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "probe.template" in details

        result = client.identify(GOOD, k=8)
        assert result.partial and result.failed_shards == ["node-1"]
        assert [c.subject_id for c in result.candidates] == ["s-node-0"]


def test_identify_queued_past_its_deadline_is_never_sent(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(live=["node-0"], search_batches_in_flight=1)
    fake = cluster.fakes["node-0"]
    fake.candidates = [("a", 0.9)]
    fake.delay = 1.0
    with cluster.client() as client, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(client.identify, GOOD, k=5, timeout=5.0)
        while not fake.batches:  # the slow search holds the node's only slot
            time.sleep(0.01)
        code, details = status_of(lambda: client.identify(GOOD, k=6, timeout=0.3))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no shard answered" in details
        assert [c.subject_id for c in slow.result().candidates] == ["a"]
        assert client.identify(GOOD, k=4).candidates  # the slot is free again
    assert sorted(call[1].k for call in fake.calls) == [4, 5]


def test_identify_escalates_to_exact_on_the_merged_answer(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(live=["node-0", "node-1"])  # verify threshold 0.5, band 0.05
    n0, n1 = cluster.fakes["node-0"], cluster.fakes["node-1"]
    with cluster.client() as client:
        # One shard's best (an impostor) is in the band, the other holds a clear
        # match: no escalation, and the nodes were told not to escalate alone.
        n0.candidates, n1.candidates = [("imp", 0.47)], [("mate", 0.72)]
        result = client.identify(GOOD, k=2)
        assert [c.subject_id for c in result.candidates] == ["mate", "imp"]
        assert all(call[1].no_escalation and not call[1].exact for call in n0.calls)

        # The merged best is in the band: every shard is asked again, exactly.
        n1.candidates = [("other", 0.46)]
        n1.exact_candidates = [("missed-mate", 0.66)]
        result = client.identify(GOOD, k=2)
        assert [c.subject_id for c in result.candidates] == ["missed-mate", "imp"]
        assert [call[1].exact for call in n0.calls[-2:]] == [False, True]

        # Below the band (a clear non-match) or above the threshold: no escalation.
        for best in (0.3, 0.8):
            n0.calls.clear()
            n0.candidates, n1.candidates = [("x", best)], [("y", best - 0.1)]
            client.identify(GOOD, k=2)
            assert [call[1].exact for call in n0.calls] == [False]


def test_subject_calls_go_to_the_owner(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(live=["node-0", "node-1"])
    with cluster.client() as client:
        for node in ("node-0", "node-1"):
            sid = cluster.owned_by(node)
            result = client.enroll(sid, np.stack([GOOD, unit(1)]), mode="replace", request_id="r")
            assert (result.subject_id, result.template_count, result.shard) == (sid, 2, node)
            sent = cluster.fakes[node].calls[-1][1]
            assert sent.mode == pb.ENROLL_MODE_REPLACE and sent.request_id == "r"

            verdict = client.verify(sid, GOOD, threshold=0.8)
            assert (verdict.score, verdict.match, verdict.templates_compared) == (
                cast(float, pytest.approx(0.75)),
                False,
                3,
            )
            assert verdict.threshold == pytest.approx(0.8)
            assert client.delete(sid) is True
            info = client.get_subject(sid)
            assert (info.subject_id, info.template_count, info.shard) == (sid, 2, node)
            other = "node-1" if node == "node-0" else "node-0"
            assert all(call[1].subject_id != sid for call in cluster.fakes[other].calls)


def test_node_errors_pass_through(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(live=["node-0", "node-1"])
    sid = cluster.owned_by("node-1")
    fake = cluster.fakes["node-1"]
    fake.fail[sid] = (grpc.StatusCode.NOT_FOUND, f"subject {sid} is not enrolled")
    with cluster.client() as client:
        assert status_of(lambda: client.verify(sid, GOOD)) == (
            grpc.StatusCode.NOT_FOUND,
            f"subject {sid} is not enrolled",
        )
        fake.fail[sid] = (INVALID, "templates[0].dim is 3, this cluster's templates have dim 8")
        assert status_of(lambda: client.enroll(sid, GOOD)) == (INVALID, fake.fail[sid][1])

        fake.fail[sid] = (grpc.StatusCode.UNAVAILABLE, "loading index")
        fake.trailers = (("grpc-retry-pushback-ms", "250"),)
        with pytest.raises(grpc.RpcError) as info:
            client.get_subject(sid)
        err: Any = info.value
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        address = cluster.shard_map.owner(sid).address
        assert err.details() == f"shard node-1 ({address}) unavailable: loading index"
        assert ("grpc-retry-pushback-ms", "250") in tuple(err.trailing_metadata())


def test_enroll_batch_splits_and_reassembles(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(live=["node-0"], dead=["node-1"])
    ids = [cluster.owned_by("node-0", "p"), cluster.owned_by("node-1", "q"), "bad id"]
    ids += [cluster.owned_by("node-0", "r"), cluster.owned_by("node-1", "s")]
    failing = cluster.owned_by("node-0", "t")
    ids.append(failing)
    cluster.fakes["node-0"].fail[failing] = (
        grpc.StatusCode.FAILED_PRECONDITION,
        "items[2].request_id f was used for other content",  # node's sub-batch position
    )
    vecs = np.stack([unit(i) for i in range(len(ids))])
    with cluster.client() as client:
        items = client.enroll_batch(ids, vecs, mode="append", request_ids=list("abcdef"))
    codes = [item.code for item in items]
    assert codes == [
        grpc.StatusCode.OK,
        grpc.StatusCode.UNAVAILABLE,
        INVALID,
        grpc.StatusCode.OK,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.FAILED_PRECONDITION,
    ]
    assert items[5].message == "items[5].request_id f was used for other content"
    assert items[2].message.startswith("items[2].subject_id 'bad id' is malformed")
    (call,) = [c for c in cluster.fakes["node-0"].calls if c[0] == "EnrollBatch"]
    assert [item.subject_id for item in call[1].items] == [ids[0], ids[3], ids[5]]
    assert [item.request_id for item in call[1].items] == ["a", "d", "f"]

    with grpc.insecure_channel(cluster.address) as channel:
        reply = pb_grpc.MatcherStub(channel).EnrollBatch(
            pb.EnrollBatchRequest(
                items=[
                    pb.EnrollRequest(
                        subject_id=ids[0], templates=[tmpl(GOOD)], mode=pb.ENROLL_MODE_APPEND
                    )
                ]
            )
        )
    assert reply.results[0].response.shard == "node-0"


def test_stats_mixes_live_and_down_nodes(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(live=["node-0"], dead=["node-1"])
    with cluster.client() as client:
        live, dead = client.stats()
    assert (live.name, live.serving, live.subjects, live.templates, live.error) == (
        "node-0",
        True,
        5,
        7,
        "",
    )
    assert live.address == cluster.shard_map.nodes[0].address
    assert (dead.name, dead.serving) == ("node-1", False)
    assert dead.error.startswith("shard node-1 (")


def test_health_reflection_and_shutdown(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(dead=["node-0"])
    with grpc.insecure_channel(cluster.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tunggal.v1.Matcher"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for a in answers for s in a.list_services_response.service}
        assert {"tunggal.v1.Matcher", "grpc.health.v1.Health"} <= names

    cluster.lt.run(cluster.gateway.stop(0))
    reply = cluster.lt.run(
        cluster.gateway.health.Check(health_pb2.HealthCheckRequest(service=""), None)
    )
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


class DenyWithoutKey(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Stands in for the tenant interceptor: needs an x-api-key header."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        keys = {k for k, _ in details.invocation_metadata or ()}
        if "x-api-key" in keys or details.method.startswith("/grpc."):
            return await continuation(details)

        async def deny(_request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "x-api-key missing")

        return grpc.unary_unary_rpc_method_handler(deny)


def test_interceptors_are_plugged_in(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(live=["node-0"], interceptors=(DenyWithoutKey(),))
    with cluster.client() as client:
        assert status_of(client.stats)[0] == grpc.StatusCode.UNAUTHENTICATED
    with cluster.client(metadata=[("x-api-key", "k")]) as client:
        assert [row.name for row in client.stats()] == ["node-0"]


def test_client_argument_errors() -> None:
    with TunggalClient("127.0.0.1:1") as client:
        with pytest.raises(ValueError, match="one template per subject"):
            client.enroll_batch(["a", "b"], np.stack([GOOD]))
        with pytest.raises(ValueError, match="mode"):
            client.enroll("a", GOOD, mode="merge")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="probe"):
            client.identify(np.ones((2, DIM)))


def test_sigterm_drains_and_exits(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "TUNGGAL_DIM": str(DIM)}
    argv = [
        sys.executable, "-m", "gateway.server",
        "--port", str(port), "--nodes", f"node-0=127.0.0.1:{free_port()}",
        "--grace", "1", "--tenants", str(ROOT / "deploy" / "tenants.demo.toml"),
        "--metrics-port", "0",
    ]  # fmt: skip
    with gateway_process(argv, port, tmp_path / "gateway.log", env) as proc:
        assert terminate(proc, 10) == 0
    text = (tmp_path / "gateway.log").read_text()
    assert '"event": "gateway_started"' in text and '"event": "gateway_stopped"' in text


def test_streams_per_client_connection_can_be_capped() -> None:
    capped = server_options(settings(overload_max_streams_per_connection=16))
    assert ("grpc.max_concurrent_streams", 16) in capped
    uncapped = server_options(settings(overload_max_streams_per_connection=0))
    assert not any(k == "grpc.max_concurrent_streams" for k, _ in uncapped)
