"""The tunggal.node.v1.MatcherNode servicer: request validation around a Gallery."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import grpc

from matcher.gallery import EnrollItem, FloatMatrix, Gallery, GalleryStats, Match, SearchQuery
from tunggal import templates as tpl
from tunggal.errors import DeadlineExceeded, InvalidArgument, TunggalError, Unavailable
from tunggal.node.v1 import node_pb2 as node_pb
from tunggal.node.v1 import node_pb2_grpc as node_grpc
from tunggal.ops.v1 import ops_pb2 as ops_pb
from tunggal.rpc import sync_errors
from tunggal.settings import NodeSettings
from tunggal.v1 import tunggal_pb2 as pb


def rss_bytes() -> int:
    """Resident memory of this process (Linux), 0 where unknown."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def to_item(request: pb.EnrollRequest, settings: NodeSettings, field: str) -> EnrollItem:
    """Validate an EnrollRequest into an EnrollItem (raises InvalidArgument)."""
    tpl.check_subject_id(request.subject_id, f"{field}subject_id")
    tpl.check_mode(request.mode)
    tpl.check_request_id(request.request_id)
    vectors = tpl.decode_templates(
        list(request.templates),
        settings.dim,
        settings.max_templates_per_enroll,
        f"{field}templates",
    )
    return EnrollItem(
        request.subject_id, vectors, request.mode == pb.ENROLL_MODE_REPLACE, request.request_id
    )


def fill_stats(reply: ops_pb.NodeStats, stats: GalleryStats) -> None:
    """Write a gallery's stats into its node's Stats row, field by field."""
    reply.subjects = stats.subjects
    reply.templates = stats.templates
    reply.capacity = stats.capacity
    reply.ef_search = stats.ef_search
    reply.last_seq = stats.last_seq
    reply.snapshot_seq = stats.snapshot_seq
    reply.index_bytes = stats.index_bytes
    reply.matrix_bytes = stats.matrix_bytes
    reply.escalations = stats.escalations
    reply.calibration_hit_rate = stats.calibration_hit_rate
    reply.calibration_probes = stats.calibration_probes
    reply.calibrated_templates = stats.calibrated_templates
    reply.calibration_met = stats.calibration_met
    reply.calibrated_at = stats.calibrated_at


def _batch_size(n: int, limit: int, field: str, one: str, many: str) -> int:
    """`n` if a batch of that many is allowed, else raise InvalidArgument naming `field`."""
    if n == 0:
        raise InvalidArgument(f"{field} is empty: send at least one {one}")
    if n > limit:
        raise InvalidArgument(f"{field} has {n} {many}, at most {limit} per call")
    return n


class MatcherNodeService(node_grpc.MatcherNodeServicer):
    """Serves one shard. Answers UNAVAILABLE until `attach` gives it a gallery."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self._gallery: Gallery | None = None
        self._draining = threading.Event()

    def attach(self, gallery: Gallery) -> None:
        """Start serving `gallery`."""
        self._gallery = gallery

    def drain(self) -> None:
        """Refuse new work from now on (shutdown in progress)."""
        self._draining.set()

    def _ready(self, context: grpc.ServicerContext) -> Gallery:
        if self._draining.is_set():
            raise Unavailable(f"node {self.settings.name} is shutting down: retry")
        if self._gallery is None:
            raise Unavailable(f"node {self.settings.name} is loading its index: retry shortly")
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("deadline passed before the node started the work")
        return self._gallery

    @sync_errors
    def Enroll(self, request: pb.EnrollRequest, context: grpc.ServicerContext) -> pb.EnrollResponse:
        """One subject's templates, durably (tunggal.v1 EnrollRequest)."""
        gallery = self._ready(context)
        result = gallery.enroll([to_item(request, self.settings, "")])[0]
        if isinstance(result, Exception):
            raise result
        return pb.EnrollResponse(
            subject_id=result.subject_id,
            template_count=result.template_count,
            replayed=result.replayed,
            shard=self.settings.name,
        )

    @sync_errors
    def EnrollBatch(
        self, request: pb.EnrollBatchRequest, context: grpc.ServicerContext
    ) -> pb.EnrollBatchResponse:
        """Many enrollments in one fsynced commit; one result per item."""
        gallery = self._ready(context)
        n = _batch_size(
            len(request.items),
            self.settings.max_batch_subjects,
            "items",
            "enrollment",
            "enrollments",
        )
        results: list[pb.EnrollBatchItemResult] = [pb.EnrollBatchItemResult() for _ in range(n)]
        items: list[EnrollItem] = []
        positions: list[int] = []
        for pos, req in enumerate(request.items):
            try:
                items.append(to_item(req, self.settings, f"items[{pos}]."))
                positions.append(pos)
            except TunggalError as exc:
                results[pos] = pb.EnrollBatchItemResult(code=exc.code.value[0], message=exc.message)
        for pos, outcome in zip(positions, gallery.enroll(items), strict=True):
            if isinstance(outcome, TunggalError):
                results[pos] = pb.EnrollBatchItemResult(
                    code=outcome.code.value[0], message=outcome.message
                )
            elif isinstance(outcome, Exception):
                raise outcome
            else:
                results[pos] = pb.EnrollBatchItemResult(
                    code=0,
                    response=pb.EnrollResponse(
                        subject_id=outcome.subject_id,
                        template_count=outcome.template_count,
                        replayed=outcome.replayed,
                        shard=self.settings.name,
                    ),
                )
        return pb.EnrollBatchResponse(results=results)

    @sync_errors
    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        """A subject and its templates, durably."""
        gallery = self._ready(context)
        tpl.check_subject_id(request.subject_id)
        removed = gallery.delete(request.subject_id)
        return pb.DeleteResponse(
            subject_id=request.subject_id, deleted=removed > 0, templates_removed=removed
        )

    @sync_errors
    def Verify(self, request: pb.VerifyRequest, context: grpc.ServicerContext) -> pb.VerifyResponse:
        """1:1: the probe's best score against one subject's templates."""
        gallery = self._ready(context)
        tpl.check_subject_id(request.subject_id)
        probe = tpl.decode_probe(request.probe, self.settings.dim)
        threshold = (
            tpl.check_threshold(request.threshold)
            if request.HasField("threshold")
            else self.settings.verify_threshold
        )
        score, compared = gallery.verify(request.subject_id, probe)
        return pb.VerifyResponse(
            subject_id=request.subject_id,
            score=score,
            match=score >= threshold,
            threshold_used=threshold,
            templates_compared=compared,
        )

    def _query(
        self, request: node_pb.NodeSearchRequest, field: str, probe: FloatMatrix | None = None
    ) -> SearchQuery:
        """Validate a NodeSearchRequest (raises InvalidArgument); `probe` is its
        template when already decoded."""
        if probe is None:
            probe = tpl.decode_template(request.probe, self.settings.dim, f"{field}probe.template")
        k = tpl.check_k(request.k, self.settings.max_k)
        min_score = tpl.check_score(request.min_score, f"{field}min_score")
        return SearchQuery(probe, k, min_score, request.exact, not request.no_escalation)

    def _fill(
        self,
        response: node_pb.NodeSearchResponse,
        gallery: Gallery,
        query: SearchQuery,
        matches: list[Match],
    ) -> node_pb.NodeSearchResponse:
        """Write `matches` into `response` in place (no message copies)."""
        add = response.candidates.add
        shard = self.settings.name
        for m in matches:
            add(subject_id=m.subject_id, score=m.score, shard=shard)
        response.templates = gallery.live_templates
        response.ef = 0 if query.exact else gallery.ef
        return response

    @sync_errors
    def Search(
        self, request: node_pb.NodeSearchRequest, context: grpc.ServicerContext
    ) -> node_pb.NodeSearchResponse:
        """This shard's top-k subjects for one probe (HNSW or exact)."""
        gallery = self._ready(context)
        query = self._query(request, "")
        return self._fill(
            node_pb.NodeSearchResponse(), gallery, query, gallery.search_many([query])[0]
        )

    @sync_errors
    def SearchBatch(
        self, request: node_pb.NodeSearchBatchRequest, context: grpc.ServicerContext
    ) -> node_pb.NodeSearchBatchResponse:
        """Many searches at once; one result per search."""
        gallery = self._ready(context)
        n = _batch_size(
            len(request.searches), self.settings.max_search_batch, "searches", "search", "searches"
        )
        reply = node_pb.NodeSearchBatchResponse()
        results = [reply.results.add() for _ in range(n)]
        queries: list[SearchQuery] = []
        positions: list[int] = []
        searches = request.searches
        probes = tpl.decode_template_batch(
            [s.probe for s in searches],
            self.settings.dim,
            lambda pos: f"searches[{pos}].probe.template",
        )
        for pos, (search, probe) in enumerate(zip(searches, probes, strict=True)):
            try:
                if isinstance(probe, InvalidArgument):
                    raise probe
                queries.append(self._query(search, f"searches[{pos}].", probe))
                positions.append(pos)
            except TunggalError as exc:
                results[pos].code = exc.code.value[0]
                results[pos].message = exc.message
        if queries:
            found = gallery.search_many(queries)
            for pos, query, matches in zip(positions, queries, found, strict=True):
                self._fill(results[pos].response, gallery, query, matches)
        return reply

    @sync_errors
    def GetSubject(
        self, request: pb.GetSubjectRequest, context: grpc.ServicerContext
    ) -> pb.Subject:
        """A subject's template count and times."""
        gallery = self._ready(context)
        tpl.check_subject_id(request.subject_id)
        count, created, updated = gallery.subject(request.subject_id)
        return pb.Subject(
            subject_id=request.subject_id,
            template_count=count,
            shard=self.settings.name,
            created_at=created,
            updated_at=updated,
        )

    @sync_errors
    def Stats(
        self, request: ops_pb.StatsRequest, context: grpc.ServicerContext
    ) -> ops_pb.NodeStats:
        """This node's row of the operators' Stats (answers while loading too)."""
        gallery = self._gallery
        reply = ops_pb.NodeStats(
            name=self.settings.name,
            address=f"{self.settings.host}:{self.settings.port}",
            serving=gallery is not None and not self._draining.is_set(),
            dim=self.settings.dim,
            rss_bytes=rss_bytes(),
        )
        if gallery is not None:
            fill_stats(reply, gallery.stats())
        return reply

    @sync_errors
    def Snapshot(
        self, request: node_pb.SnapshotRequest, context: grpc.ServicerContext
    ) -> node_pb.SnapshotResponse:
        """Write a snapshot of the HNSW index now."""
        gallery = self._ready(context)
        seq, path = gallery.snapshot()
        return node_pb.SnapshotResponse(seq=seq, path=str(path) if path else "")
