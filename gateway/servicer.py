"""The gateway's services: tunggal.v1.Matcher and tunggal.ops.v1.Operations.

Every request is validated here first (the same checks and messages as the
nodes, from `tunggal.templates`), so a malformed call is INVALID_ARGUMENT
before anything is forwarded; `gateway.fanout` then calls the nodes. A
node's status reaches the caller with its code, and its
``grpc-retry-pushback-ms`` trailer with it. Each call's node calls get the
caller's remaining deadline less ``deadline_margin_s`` (``default_deadline_s``
when it has none).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
import grpc.aio
import structlog

from gateway.fanout import Budget, Fanout
from gateway.shard_errors import ShardError, code_number
from shard.shardmap import Node
from tunggal.errors import DeadlineExceeded, InvalidArgument, TunggalError
from tunggal.node.v1 import node_pb2 as node_pb
from tunggal.ops.v1 import ops_pb2 as ops_pb
from tunggal.ops.v1 import ops_pb2_grpc as ops_grpc
from tunggal.rpc import async_errors
from tunggal.settings import GatewaySettings
from tunggal.templates import (
    check_k,
    check_mode,
    check_request_id,
    check_score,
    check_subject_id,
    check_threshold,
    decode_probe,
    decode_templates,
)
from tunggal.v1 import tunggal_pb2 as pb
from tunggal.v1 import tunggal_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from gateway.fanout import StubMethod

_log = structlog.get_logger("gateway")

Context = grpc.aio.ServicerContext[Any, Any]


class _ForSubject(Protocol):
    """A request about one subject (Enroll, Delete, Verify, GetSubject): its owner answers."""

    @property
    def subject_id(self) -> str: ...


Req = TypeVar("Req", bound=_ForSubject)
Resp = TypeVar("Resp")

# time_remaining() above this many seconds means "no deadline" (sync servers).
_NO_DEADLINE_S = 1e8


def node_budget(settings: GatewaySettings, context: Context) -> Budget:
    """The seconds the node calls of this call may take, asked afresh each time."""

    def budget() -> float:
        remaining: float | None = context.time_remaining()
        if remaining is None or remaining > _NO_DEADLINE_S:
            remaining = settings.default_deadline_s
        if remaining <= 0:
            raise DeadlineExceeded("the call's deadline passed before it reached the shards")
        return max(remaining - settings.deadline_margin_s, remaining / 2)

    return budget


class GatewayMatcher(pb_grpc.MatcherServicer):
    """tunggal.v1.Matcher over the nodes `fanout` reaches."""

    def __init__(self, settings: GatewaySettings, fanout: Fanout) -> None:
        self.settings = settings
        self.fanout = fanout

    async def _owner_call(
        self, request: Req, method: StubMethod[Req, Resp], context: Context
    ) -> tuple[Node, Resp]:
        """The owner of the request's subject and its answer; its error keeps its code
        and pushback trailer."""
        try:
            return await self.fanout.owner_call(
                request.subject_id, method, request, node_budget(self.settings, context)
            )
        except ShardError as exc:
            if exc.trailers:
                context.set_trailing_metadata(exc.trailers)
            raise

    async def _forward(self, request: Req, method: StubMethod[Req, Resp], context: Context) -> Resp:
        """The answer of the request's owner, as it is (`_owner_call`)."""
        _, response = await self._owner_call(request, method, context)
        return response

    def _check_enroll(self, request: pb.EnrollRequest, field: str = "") -> None:
        """The node's checks (`field` prefixes names, e.g. ``items[3].``)."""
        check_subject_id(request.subject_id, f"{field}subject_id")
        check_mode(request.mode)
        check_request_id(request.request_id)
        decode_templates(
            list(request.templates),
            self.settings.dim,
            self.settings.max_templates_per_enroll,
            f"{field}templates",
        )

    @async_errors
    async def Enroll(self, request: pb.EnrollRequest, context: Context) -> pb.EnrollResponse:
        """Check the enrollment, send it to the subject's owner; the answer names the shard."""
        self._check_enroll(request)
        node, response = await self._owner_call(request, lambda stub: stub.Enroll, context)
        response.shard = node.name
        return response

    @async_errors
    async def EnrollBatch(
        self, request: pb.EnrollBatchRequest, context: Context
    ) -> pb.EnrollBatchResponse:
        """Check each item, send the valid ones to their owners; one result per item, in order.

        A malformed item fails alone (INVALID_ARGUMENT in its result), not the batch.
        """
        items = request.items
        limit = self.settings.max_batch_subjects
        if not items:
            raise InvalidArgument("items is empty: send at least one enrollment")
        if len(items) > limit:
            raise InvalidArgument(f"items has {len(items)} enrollments, at most {limit} per call")
        results = [pb.EnrollBatchItemResult() for _ in items]
        valid: dict[int, pb.EnrollRequest] = {}
        for i, item in enumerate(items):
            try:
                self._check_enroll(item, f"items[{i}].")
            except TunggalError as exc:
                results[i].code = code_number(exc.code)
                results[i].message = exc.message
            else:
                valid[i] = item
        answers = await self.fanout.enroll_batch(valid, node_budget(self.settings, context))
        for i, result in answers.items():
            results[i] = result
        return pb.EnrollBatchResponse(results=results)

    @async_errors
    async def Delete(self, request: pb.DeleteRequest, context: Context) -> pb.DeleteResponse:
        """Delete the subject on its owner."""
        check_subject_id(request.subject_id)
        return await self._forward(request, lambda stub: stub.Delete, context)

    @async_errors
    async def Verify(self, request: pb.VerifyRequest, context: Context) -> pb.VerifyResponse:
        """Check the probe, score it against the subject on its owner."""
        check_subject_id(request.subject_id)
        decode_probe(request.probe, self.settings.dim)
        if request.HasField("threshold"):
            check_threshold(request.threshold)
        return await self._forward(request, lambda stub: stub.Verify, context)

    @async_errors
    async def GetSubject(self, request: pb.GetSubjectRequest, context: Context) -> pb.Subject:
        """The subject as its owner holds it, with the shard's name."""
        check_subject_id(request.subject_id)
        node, response = await self._owner_call(request, lambda stub: stub.GetSubject, context)
        response.shard = node.name
        return response

    @async_errors
    async def Identify(self, request: pb.IdentifyRequest, context: Context) -> pb.IdentifyResponse:
        """Search every shard and merge the top `k`, re-asked by exact search when ambiguous.

        Shards that fail make the answer partial (or fail it with ``require_all_shards``).
        """
        decode_probe(request.probe, self.settings.dim)
        k = check_k(request.k, self.settings.max_k)
        min_score = (
            check_score(request.min_score, "min_score") if request.HasField("min_score") else -1.0
        )
        started = time.perf_counter()
        search = node_pb.NodeSearchRequest(
            probe=request.probe.template,
            k=k,
            min_score=min_score,
            exact=request.exact,
            no_escalation=True,  # the fan-out decides on the merged answer
        )
        found = await self.fanout.identify(
            search, node_budget(self.settings, context), request.require_all_shards
        )
        failed_shards = [f.node.name for f in found.failures]
        _log.debug(
            "identify",
            k=k,
            exact=request.exact,
            escalated=found.escalated,
            candidates=len(found.candidates),
            shards_answered=found.answered,
            failed_shards=failed_shards,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return pb.IdentifyResponse(
            candidates=found.candidates,
            shards_answered=found.answered,
            shards_total=len(self.fanout.shard_map.nodes),
            partial=bool(found.failures),
            failed_shards=failed_shards,
        )


class GatewayOperations(ops_grpc.OperationsServicer):
    """tunggal.ops.v1.Operations: the nodes behind this gateway, and what it decided."""

    def __init__(self, settings: GatewaySettings, fanout: Fanout) -> None:
        self.settings = settings
        self.fanout = fanout

    @async_errors
    async def Stats(self, request: ops_pb.StatsRequest, context: Context) -> ops_pb.StatsResponse:
        """One row per node (an unreachable node's row says why) and the gateway's counters."""
        rows = await self.fanout.node_stats(request, node_budget(self.settings, context))
        counts = self.fanout.counts
        return ops_pb.StatsResponse(
            nodes=rows,
            gateway=ops_pb.GatewayStats(
                identify_calls=counts.calls, escalations=counts.escalations
            ),
        )
