"""Coalesce concurrent Identify searches into SearchBatch calls, per node.

Each node gets at most `in_flight` SearchBatch calls at a time. A search
that finds a free slot is sent at once, so an unloaded gateway adds no wait;
searches that arrive while every slot is busy queue up, and each call that
finishes sends the next batch (at most `max_batch` searches and
`MAX_BATCH_CANDIDATES` wanted candidates). Under load a node then pays one
RPC and one hnswlib batch (run on hnswlib's own threads) per batch instead
of per search.

Deadlines stay per search: a search whose deadline passes while it waits is
answered DEADLINE_EXCEEDED and never sent, and a batch is sent with the
latest deadline of its searches.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import grpc
import grpc.aio

from gateway.shard_errors import ShardError, shard_error
from shard.shardmap import Node
from tunggal.node.v1 import node_pb2 as node_pb
from tunggal.node.v1 import node_pb2_grpc as node_grpc

MAX_BATCH_CANDIDATES = 4096
"""A batch stops growing once its searches want this many candidates (sum of k)."""


@dataclass(frozen=True)
class _Waiting:
    request: node_pb.NodeSearchRequest
    deadline: float  # event-loop time
    answer: asyncio.Future[node_pb.NodeSearchResponse]


class SearchBatcher:
    """Sends one node's searches as SearchBatch calls (see the module docstring)."""

    def __init__(
        self, node: Node, stub: node_grpc.MatcherNodeAsyncStub, max_batch: int, in_flight: int
    ) -> None:
        self.node = node
        self._stub = stub
        self._max_batch = max_batch
        self._in_flight = in_flight
        self._running = 0
        self._queue: deque[_Waiting] = deque()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        """Searches waiting for a free slot."""
        return len(self._queue)

    def submit(
        self, request: node_pb.NodeSearchRequest, timeout: float
    ) -> asyncio.Future[node_pb.NodeSearchResponse]:
        """A future of the node's answer to `request`, failed with a ShardError
        (DEADLINE_EXCEEDED when `timeout` seconds pass first). Cancelling it
        withdraws the search if it has not been sent yet."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[node_pb.NodeSearchResponse] = loop.create_future()
        deadline = loop.time() + timeout
        timer = loop.call_at(deadline, self._expire, answer, timeout)
        answer.add_done_callback(lambda _answer: timer.cancel())
        self._queue.append(_Waiting(request, deadline, answer))
        self._pump()
        return answer

    def _expire(self, answer: asyncio.Future[node_pb.NodeSearchResponse], timeout: float) -> None:
        if not answer.done():
            answer.set_exception(self._late(timeout))

    def _late(self, timeout: float) -> ShardError:
        return ShardError(
            self.node,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"shard {self.node} did not answer in time ({timeout:.3f} s)",
        )

    def _pump(self) -> None:
        """Start batches while slots are free and searches wait."""
        while self._running < self._in_flight and self._queue:
            batch = self._take()
            if not batch:
                continue
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Waiting]:
        """The next batch: live searches from the queue's head, within the limits."""
        now = asyncio.get_running_loop().time()
        batch: list[_Waiting] = []
        wanted = 0
        while self._queue and len(batch) < self._max_batch:
            head = self._queue[0]
            if head.answer.done():  # its caller gave up or was cancelled
                self._queue.popleft()
                continue
            if head.deadline <= now:
                self._queue.popleft()
                head.answer.set_exception(self._late(0.0))
                continue
            if batch and wanted + head.request.k > MAX_BATCH_CANDIDATES:
                break
            batch.append(self._queue.popleft())
            wanted += head.request.k
        return batch

    async def _send(self, batch: list[_Waiting]) -> None:
        try:
            timeout = max(w.deadline for w in batch) - asyncio.get_running_loop().time()
            request = node_pb.NodeSearchBatchRequest(searches=[w.request for w in batch])
            try:
                reply = await self._stub.SearchBatch(request, timeout=max(timeout, 0.001))
            except grpc.aio.AioRpcError as exc:
                error = shard_error(self.node, exc)
                for waiting in batch:
                    if not waiting.answer.done():
                        waiting.answer.set_exception(error)
                return
            for waiting, result in zip(batch, reply.results, strict=False):
                if waiting.answer.done():
                    continue
                if result.code == 0:
                    waiting.answer.set_result(result.response)
                else:
                    code = _CODES.get(result.code, grpc.StatusCode.UNKNOWN)
                    waiting.answer.set_exception(ShardError(self.node, code, result.message))
            for waiting in batch[len(reply.results) :]:
                if not waiting.answer.done():
                    waiting.answer.set_exception(
                        ShardError(
                            self.node,
                            grpc.StatusCode.INTERNAL,
                            f"shard {self.node} answered {len(reply.results)} of "
                            f"{len(batch)} searches",
                        )
                    )
        finally:
            self._running -= 1
            self._pump()


_CODES = {code.value[0]: code for code in grpc.StatusCode}
