"""The gateway's calls to the matcher nodes: owners, every shard, escalation.

Subject calls go to the owning node (rendezvous hashing, `shard.shardmap`);
EnrollBatch is split by owner and sent concurrently. Identify asks every
node concurrently (each through its `gateway.batching.SearchBatcher`) and
merges their answers, answering with what it has when some nodes fail. The
nodes are told not to escalate: the gateway decides on the merged answer and,
when its best score falls in the band just below the verify threshold, asks
every shard again by exact search, and counts it (`IdentifyCounts`, read by
Operations.Stats and /metrics). A node's status is passed on with its code
(`gateway.shard_errors`); a failure that describes the node, not the
request, is logged as ``shard_call_failed``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import grpc
import grpc.aio
import structlog

from gateway.merge import merge_candidates
from gateway.nodes import NodePool
from gateway.shard_errors import REQUEST_CODES, ShardError, code_number, shard_error
from shard.shardmap import Node, ShardMap
from tunggal.errors import DeadlineExceeded, Unavailable
from tunggal.node.v1 import node_pb2 as node_pb
from tunggal.node.v1 import node_pb2_grpc as node_grpc
from tunggal.ops.v1 import ops_pb2 as ops_pb
from tunggal.settings import GatewaySettings
from tunggal.templates import in_escalation_band
from tunggal.v1 import tunggal_pb2 as pb

_log = structlog.get_logger("gateway")

Req = TypeVar("Req")
Resp = TypeVar("Resp")

Budget = Callable[[], float]
"""Seconds the node calls of one public call may take from now (raises
`tunggal.errors.DeadlineExceeded` once the call's deadline has passed)."""

if TYPE_CHECKING:  # the async stub and generic multicallables exist for type checkers only
    StubMethod: TypeAlias = Callable[
        [node_grpc.MatcherNodeAsyncStub], grpc.aio.UnaryUnaryMultiCallable[Req, Resp]
    ]
    """Picks one method of a node's stub, e.g. ``lambda stub: stub.Verify``."""


@dataclass
class IdentifyCounts:
    """What this gateway decided for Identify since it started."""

    calls: int = 0
    """Identify calls that reached the shards."""
    escalations: int = 0
    """Of those, the calls re-asked by exact search (merged best score in the band)."""


@dataclass(frozen=True)
class Search:
    """One search of every shard: the merged top-k, how many answered, who failed."""

    candidates: list[pb.Candidate]
    answered: int
    failures: list[ShardError]
    escalated: bool = False
    """True when this is the exact answer the escalation asked for."""


def log_shard_failure(method: str, exc: ShardError) -> None:
    """Log a node's failure unless its status describes the request."""
    if exc.code in REQUEST_CODES:
        return
    _log.warning(
        "shard_call_failed",
        method=method,
        shard=exc.node.name,
        address=exc.node.address,
        code=exc.code.name,
        error=exc.message,
    )


class Fanout:
    """Sends a gateway's calls to its matcher nodes (see the module docstring)."""

    def __init__(self, settings: GatewaySettings, shard_map: ShardMap, pool: NodePool) -> None:
        self.settings = settings
        self.shard_map = shard_map
        self.pool = pool
        self.counts = IdentifyCounts()

    async def _unary(
        self,
        node: Node,
        call: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout_s: float,
    ) -> Resp:
        try:
            return await call(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise shard_error(node, exc) from None

    async def owner_call(
        self,
        subject_id: str,
        method: StubMethod[Req, Resp],
        request: Req,
        budget: Budget,
    ) -> tuple[Node, Resp]:
        """Send `request` to the owner of `subject_id`; its failure is a ShardError."""
        node = self.shard_map.owner(subject_id)
        try:
            return node, await self._unary(node, method(self.pool[node].stub), request, budget())
        except ShardError as exc:
            log_shard_failure(type(request).__name__.removesuffix("Request"), exc)
            raise

    async def enroll_batch(
        self, items: Mapping[int, pb.EnrollRequest], budget: Budget
    ) -> dict[int, pb.EnrollBatchItemResult]:
        """Enroll `items` (keyed by their position in the caller's batch), one
        EnrollBatch per owner, concurrently; each item's result by position.

        A node that fails fails its items with its code; messages that name
        an item use the caller's position.
        """
        positions = list(items)
        timeout = budget()
        groups = self.shard_map.group([items[i].subject_id for i in positions])
        results: dict[int, pb.EnrollBatchItemResult] = {}

        async def send(node: Node, group: list[int]) -> None:
            indices = [positions[g] for g in group]
            sub = pb.EnrollBatchRequest(items=[items[i] for i in indices])
            try:
                answer = await self._unary(node, self.pool[node].stub.EnrollBatch, sub, timeout)
            except ShardError as exc:
                log_shard_failure("EnrollBatch", exc)
                for i in indices:
                    results[i] = pb.EnrollBatchItemResult(
                        code=code_number(exc.code), message=exc.message
                    )
                return
            if len(answer.results) != len(indices):
                message = (
                    f"shard {node} returned {len(answer.results)} results for {len(indices)} items"
                )
                _log.error("shard_batch_mismatch", shard=node.name, error=message)
                for i in indices:
                    results[i] = pb.EnrollBatchItemResult(
                        code=code_number(grpc.StatusCode.INTERNAL), message=message
                    )
                return
            for j, (i, result) in enumerate(zip(indices, answer.results, strict=True)):
                if result.code == 0:
                    result.response.shard = node.name
                elif result.message.startswith(f"items[{j}]."):
                    # The node numbers items within its sub-batch; use the caller's.
                    result.message = f"items[{i}]." + result.message[len(f"items[{j}].") :]
                results[i] = result

        await asyncio.gather(*(send(node, group) for node, group in groups.items()))
        return results

    async def identify(
        self, search: node_pb.NodeSearchRequest, budget: Budget, require_all: bool
    ) -> Search:
        """Search every shard and merge; re-ask exactly when the merged best is in the band.

        `search` must have ``no_escalation`` set: the decision is taken here,
        on the merged answer, and counted in `counts`.
        """
        self.counts.calls += 1
        first = await self.search_all(search, budget(), require_all)
        if search.exact or not self._ambiguous(first.candidates):
            return first
        # The best score over every shard is just under the threshold: that
        # is where a mate HNSW missed would hide. Ask exactly.
        self.counts.escalations += 1
        exact = node_pb.NodeSearchRequest()
        exact.CopyFrom(search)  # the first may still sit in a batcher's queue
        exact.exact = True
        second = await self.search_all(exact, budget(), require_all)
        return dataclasses.replace(second, escalated=True)

    def _ambiguous(self, candidates: Sequence[pb.Candidate]) -> bool:
        best = candidates[0].score if candidates else None
        return in_escalation_band(best, self.settings.verify_threshold, self.settings.escalate_band)

    async def search_all(
        self, search: node_pb.NodeSearchRequest, timeout_s: float, require_all: bool
    ) -> Search:
        """Ask every shard once, within `timeout_s` seconds, and merge the answers.

        Raises when no shard answered, or one failed and `require_all` is set.
        """
        nodes = self.shard_map.nodes
        # Futures, not tasks: gathering them adds no task per shard.
        outcomes = await asyncio.gather(
            *(self.pool[node].searches.submit(search, timeout_s) for node in nodes),
            return_exceptions=True,
        )
        answers: list[tuple[str, Sequence[pb.Candidate]]] = []
        failures: list[ShardError] = []
        for node, outcome in zip(nodes, outcomes, strict=True):
            if isinstance(outcome, ShardError):
                log_shard_failure("Search", outcome)
                failures.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                answers.append((node.name, outcome.candidates))
        if failures:
            detail = "; ".join(f.message for f in failures)
            failed = ", ".join(f.node.name for f in failures)
            if not answers:
                codes = {f.code for f in failures}
                if codes == {grpc.StatusCode.DEADLINE_EXCEEDED}:
                    raise DeadlineExceeded(f"no shard answered within {timeout_s:.3f} s: {detail}")
                if codes == {grpc.StatusCode.INVALID_ARGUMENT}:
                    raise failures[0]
                raise Unavailable(f"no shard answered ({failed}): {detail}")
            if require_all:
                raise Unavailable(
                    f"{len(failures)} of {len(nodes)} shards failed ({failed}) and "
                    f"require_all_shards is set: {detail}"
                )
        merged = merge_candidates(answers, search.k, search.min_score)
        return Search(merged, len(answers), failures)

    async def node_stats(
        self, request: ops_pb.StatsRequest, budget: Budget
    ) -> list[ops_pb.NodeStats]:
        """One row per node, in shard-map order; a node that fails gets a row with `error`."""
        timeout = budget()

        async def ask(node: Node) -> ops_pb.NodeStats:
            try:
                row = await self._unary(node, self.pool[node].stub.Stats, request, timeout)
            except ShardError as exc:
                log_shard_failure("Stats", exc)
                return ops_pb.NodeStats(
                    name=node.name, address=node.address, serving=False, error=exc.message
                )
            if row.name and row.name != node.name:
                row.error = f"node calls itself {row.name!r}, the gateway maps it as {node.name!r}"
            row.name = node.name
            row.address = node.address
            return row

        return list(await asyncio.gather(*(ask(node) for node in self.shard_map.nodes)))
