"""A typed, synchronous Python client of the Tunggal gateway (tunggal.v1.Matcher).

Templates go in as numpy arrays and results come back as small frozen
dataclasses. Failed calls raise `grpc.RpcError` (use ``.code()`` and
``.details()``), with the status codes documented in tunggal.proto.

    with TunggalClient("127.0.0.1:50051", metadata=bearer(api_key)) as client:
        client.enroll("3171012345670001", templates, mode="replace")
        result = client.identify(probe, k=5)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, NamedTuple, Self

import grpc
import numpy as np
import numpy.typing as npt

from tunggal.ops.v1 import ops_pb2 as ops_pb
from tunggal.ops.v1 import ops_pb2_grpc as ops_grpc
from tunggal.settings import MiB, grpc_message_options
from tunggal.templates import encode_template
from tunggal.v1 import tunggal_pb2 as pb
from tunggal.v1 import tunggal_pb2_grpc as pb_grpc

EnrollModeName = Literal["append", "replace"]
_MODES: dict[str, pb.EnrollMode.ValueType] = {
    "append": pb.ENROLL_MODE_APPEND,
    "replace": pb.ENROLL_MODE_REPLACE,
}
_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class EnrollResult:
    """Outcome of an enrollment."""

    subject_id: str
    template_count: int
    replayed: bool
    shard: str


class BatchItem(NamedTuple):
    """Outcome of one EnrollBatch item: unpacks as ``(code, message)``."""

    code: grpc.StatusCode
    message: str

    @property
    def ok(self) -> bool:
        """True when the item was enrolled."""
        return self.code == grpc.StatusCode.OK


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a 1:1 comparison."""

    score: float
    match: bool
    threshold: float
    templates_compared: int = 0


class Candidate(NamedTuple):
    """One Identify row: unpacks as ``(subject_id, score, shard)``."""

    subject_id: str
    score: float
    shard: str


@dataclass(frozen=True)
class IdentifyResult:
    """Outcome of a 1:N search; `partial` means a mate may be missing."""

    candidates: list[Candidate]
    partial: bool
    shards_answered: int
    shards_total: int
    failed_shards: list[str]


@dataclass(frozen=True)
class SubjectInfo:
    """What the cluster stores about a subject."""

    subject_id: str
    template_count: int
    shard: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class NodeInfo:
    """One matcher node's row of Stats; `error` is set when it was unreachable."""

    name: str
    address: str
    serving: bool
    subjects: int
    templates: int
    capacity: int
    dim: int
    ef_search: int
    last_seq: int
    snapshot_seq: int
    rss_bytes: int
    error: str
    index_bytes: int = 0
    matrix_bytes: int = 0
    calibration_hit_rate: float = 0.0
    calibration_probes: int = 0
    calibrated_templates: int = 0
    calibration_met: bool = False
    escalations: int = 0
    calibrated_at: float = 0.0


@dataclass(frozen=True)
class GatewayCounts:
    """What the answering gateway decided since it started."""

    identify_calls: int
    escalations: int


@dataclass(frozen=True)
class ClusterStats:
    """Operations' Stats: one row per node and the answering gateway's counts."""

    nodes: list[NodeInfo]
    gateway: GatewayCounts


def bearer(api_key: str) -> list[tuple[str, str]]:
    """Call metadata naming the tenant: ``authorization: Bearer <api_key>``."""
    if not api_key or api_key != api_key.strip() or any(c in api_key for c in "\r\n"):
        raise ValueError("API key is empty or has surrounding whitespace or line breaks")
    return [("authorization", f"Bearer {api_key}")]


def _as_matrix(templates: npt.ArrayLike, what: str) -> npt.NDArray[np.float32]:
    arr = np.asarray(templates, dtype=np.float32)
    match arr.shape:
        case (_,):
            return arr.reshape(1, -1)
        case (_, _):
            return arr
    raise ValueError(f"{what} must have shape (n, dim) or (dim,), got {arr.shape}")


def _as_vector(probe: npt.ArrayLike) -> pb.Template:
    arr = np.asarray(probe, dtype=np.float32)
    match arr.shape:
        case (1, _):
            arr = arr[0]
    if arr.ndim != 1:
        raise ValueError(f"probe must have shape (dim,) or (1, dim), got {arr.shape}")
    return encode_template(arr)


def _mode(mode: EnrollModeName) -> pb.EnrollMode.ValueType:
    try:
        return _MODES[mode]
    except KeyError:
        raise ValueError(f"mode must be 'append' or 'replace', not {mode!r}") from None


def _enroll_result(response: pb.EnrollResponse) -> EnrollResult:
    return EnrollResult(
        subject_id=response.subject_id,
        template_count=response.template_count,
        replayed=response.replayed,
        shard=response.shard,
    )


class TunggalClient:
    """Synchronous client of a Tunggal gateway at `address` (host:port).

    `timeout` (seconds, None for none) is the default deadline of every call;
    `metadata` is sent with every call: ``bearer(api_key)`` names the tenant
    (the gateway answers calls without a key with UNAUTHENTICATED).
    """

    def __init__(
        self,
        address: str,
        timeout: float | None = 10.0,
        metadata: Sequence[tuple[str, str]] = (),
        *,
        max_message_bytes: int = 16 * MiB,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.metadata: tuple[tuple[str, str], ...] = tuple(metadata)
        self._channel = grpc.insecure_channel(
            address, options=grpc_message_options(max_message_bytes)
        )
        self._stub = pb_grpc.MatcherStub(self._channel)
        self._ops = ops_grpc.OperationsStub(self._channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    @property
    def stub(self) -> pb_grpc.MatcherStub:
        """The raw generated stub, for calls this class does not wrap."""
        return self._stub

    def _t(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def enroll(
        self,
        subject_id: str,
        templates: npt.ArrayLike,
        mode: EnrollModeName = "append",
        request_id: str = "",
        *,
        timeout: float | None = None,
    ) -> EnrollResult:
        """Enroll one subject's templates, shape (n, dim) or (dim,)."""
        matrix = _as_matrix(templates, "templates")
        request = pb.EnrollRequest(
            subject_id=subject_id,
            templates=[encode_template(row) for row in matrix],
            mode=_mode(mode),
            request_id=request_id,
        )
        response = self._stub.Enroll(request, timeout=self._t(timeout), metadata=self.metadata)
        return _enroll_result(response)

    def enroll_batch(
        self,
        subject_ids: Sequence[str],
        templates: npt.ArrayLike,
        mode: EnrollModeName = "append",
        request_ids: Sequence[str] | None = None,
        *,
        timeout: float | None = None,
    ) -> list[BatchItem]:
        """Enroll many subjects, one template each (row i is subject_ids[i]).

        Returns one (code, message) per subject, in order; a whole-call
        failure raises grpc.RpcError.
        """
        matrix = _as_matrix(templates, "templates")
        if matrix.shape[0] != len(subject_ids):
            raise ValueError(
                f"{len(subject_ids)} subject ids but {matrix.shape[0]} templates: "
                "give one template per subject"
            )
        if request_ids is not None and len(request_ids) != len(subject_ids):
            raise ValueError(f"{len(subject_ids)} subject ids but {len(request_ids)} request ids")
        enroll_mode = _mode(mode)
        items = [
            pb.EnrollRequest(
                subject_id=subject_id,
                templates=[encode_template(matrix[i])],
                mode=enroll_mode,
                request_id=request_ids[i] if request_ids is not None else "",
            )
            for i, subject_id in enumerate(subject_ids)
        ]
        response = self._stub.EnrollBatch(
            pb.EnrollBatchRequest(items=items), timeout=self._t(timeout), metadata=self.metadata
        )
        return [
            BatchItem(_CODES.get(r.code, grpc.StatusCode.UNKNOWN), r.message)
            for r in response.results
        ]

    def delete(self, subject_id: str, *, timeout: float | None = None) -> bool:
        """Delete a subject; False when it did not exist."""
        response = self._stub.Delete(
            pb.DeleteRequest(subject_id=subject_id),
            timeout=self._t(timeout),
            metadata=self.metadata,
        )
        return response.deleted

    def verify(
        self,
        subject_id: str,
        probe: npt.ArrayLike,
        threshold: float | None = None,
        *,
        timeout: float | None = None,
    ) -> VerifyResult:
        """Compare `probe` (dim,) with `subject_id`'s templates (NOT_FOUND if unknown)."""
        request = pb.VerifyRequest(
            subject_id=subject_id, probe=pb.Probe(template=_as_vector(probe))
        )
        if threshold is not None:
            request.threshold = threshold
        response = self._stub.Verify(request, timeout=self._t(timeout), metadata=self.metadata)
        return VerifyResult(
            score=response.score,
            match=response.match,
            threshold=response.threshold_used,
            templates_compared=response.templates_compared,
        )

    def identify(
        self,
        probe: npt.ArrayLike,
        k: int = 10,
        min_score: float | None = None,
        exact: bool = False,
        require_all_shards: bool = False,
        *,
        timeout: float | None = None,
    ) -> IdentifyResult:
        """The `k` subjects most similar to `probe` (dim,), best first."""
        request = pb.IdentifyRequest(
            probe=pb.Probe(template=_as_vector(probe)),
            k=k,
            exact=exact,
            require_all_shards=require_all_shards,
        )
        if min_score is not None:
            request.min_score = min_score
        response = self._stub.Identify(request, timeout=self._t(timeout), metadata=self.metadata)
        return IdentifyResult(
            candidates=[Candidate(c.subject_id, c.score, c.shard) for c in response.candidates],
            partial=response.partial,
            shards_answered=response.shards_answered,
            shards_total=response.shards_total,
            failed_shards=list(response.failed_shards),
        )

    def get_subject(self, subject_id: str, *, timeout: float | None = None) -> SubjectInfo:
        """What is stored for `subject_id` (raises NOT_FOUND if not enrolled)."""
        response = self._stub.GetSubject(
            pb.GetSubjectRequest(subject_id=subject_id),
            timeout=self._t(timeout),
            metadata=self.metadata,
        )
        return SubjectInfo(
            subject_id=response.subject_id,
            template_count=response.template_count,
            shard=response.shard,
            created_at=response.created_at,
            updated_at=response.updated_at,
        )

    def stats(self, *, timeout: float | None = None) -> list[NodeInfo]:
        """One row per matcher node; a down node's row has `error` set."""
        return self.cluster_stats(timeout=timeout).nodes

    def cluster_stats(self, *, timeout: float | None = None) -> ClusterStats:
        """Every node's row and the answering gateway's Identify and escalation counts."""
        response = self._ops.Stats(
            ops_pb.StatsRequest(), timeout=self._t(timeout), metadata=self.metadata
        )
        nodes = [
            NodeInfo(
                name=n.name,
                address=n.address,
                serving=n.serving,
                subjects=n.subjects,
                templates=n.templates,
                capacity=n.capacity,
                dim=n.dim,
                ef_search=n.ef_search,
                last_seq=n.last_seq,
                snapshot_seq=n.snapshot_seq,
                rss_bytes=n.rss_bytes,
                error=n.error,
                index_bytes=n.index_bytes,
                matrix_bytes=n.matrix_bytes,
                calibration_hit_rate=n.calibration_hit_rate,
                calibration_probes=n.calibration_probes,
                calibrated_templates=n.calibrated_templates,
                calibration_met=n.calibration_met,
                escalations=n.escalations,
                calibrated_at=n.calibrated_at,
            )
            for n in response.nodes
        ]
        gateway = GatewayCounts(response.gateway.identify_calls, response.gateway.escalations)
        return ClusterStats(nodes, gateway)
