"""The gateway: serves tunggal.v1.Matcher and fans calls out to the matcher nodes.

Every request is validated here first (same checks and messages as the
nodes, from `tunggal.templates`). Subject calls (Enroll, Delete, Verify,
GetSubject) go to the owning node (rendezvous hashing, `shard.shardmap`);
EnrollBatch is split by owner and sent concurrently; Identify asks every node
concurrently and merges, answering with what it has (partial=true) when some
nodes fail. A node's status is passed on with its code; a node that cannot be
reached is UNAVAILABLE naming the shard.

Run: ``tunggal-gateway --tenants deploy/tenants.demo.toml --nodes
node-0=127.0.0.1:50052,node-1=127.0.0.1:50053`` or ``python -m
gateway.server``. The gateway refuses to start without a tenants file
(``--tenants`` or ``TUNGGAL_GATEWAY_TENANTS_FILE``, docs/tenants.md) unless
``--no-auth`` / ``TUNGGAL_GATEWAY_AUTH=off`` is given: no keys, tenants or
quotas, for local experiments only. `run` adds, around the servicer, the
interceptors of `gateway.interceptors` (audit, metrics, auth, quotas,
overload), serves /metrics (``--metrics-port``, 0 = off), reloads the
tenants file on change or SIGHUP, and sends ``TUNGGAL_INTERNAL_SECRET`` to
the nodes when it is set. In tests: ``server = await serve(settings,
port=0)``, then ``server.port`` and ``await server.stop()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from gateway.interceptors import build_interceptors
from gateway.merge import merge_candidates
from gateway.metrics import GatewayMetrics, MetricsSettings, start_metrics_server
from gateway.nodes import NodePool
from gateway.overload import AdaptiveLimiter, OverloadSettings
from gateway.shard_errors import REQUEST_CODES, ShardError, shard_error
from gateway.tenants import TenantRegistry, TenantsFileError, TenantsSettings
from shard.shardmap import Node, ShardMap, parse_nodes
from tunggal.errors import (
    DeadlineExceeded,
    InvalidArgument,
    TunggalError,
    Unavailable,
)
from tunggal.internal_auth import SECRET_ENV, internal_secret
from tunggal.logs import configure_logging
from tunggal.node.v1 import node_pb2 as node_pb
from tunggal.node.v1 import node_pb2_grpc as node_grpc
from tunggal.ops.v1 import ops_pb2 as ops_pb
from tunggal.ops.v1 import ops_pb2_grpc as ops_grpc
from tunggal.rpc import async_errors
from tunggal.settings import GatewaySettings, grpc_message_options
from tunggal.templates import (
    check_k,
    check_mode,
    check_request_id,
    check_score,
    check_subject_id,
    check_threshold,
    decode_probe,
    decode_templates,
    in_escalation_band,
)
from tunggal.v1 import tunggal_pb2 as pb
from tunggal.v1 import tunggal_pb2_grpc as pb_grpc

_log = structlog.get_logger("gateway")

Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req")
Resp = TypeVar("Resp")

MATCHER_SERVICE = pb.DESCRIPTOR.services_by_name["Matcher"].full_name
OPERATIONS_SERVICE = ops_pb.DESCRIPTOR.services_by_name["Operations"].full_name
# time_remaining() above this many seconds means "no deadline" (sync servers).
_NO_DEADLINE_S = 1e8


def code_number(code: grpc.StatusCode) -> int:
    """The integer of a gRPC status code (what EnrollBatchItemResult.code holds)."""
    number: int = code.value[0]
    return number


class MatcherGateway(pb_grpc.MatcherServicer):
    """tunggal.v1.Matcher over a set of matcher nodes."""

    def __init__(self, settings: GatewaySettings, shard_map: ShardMap, pool: NodePool) -> None:
        self.settings = settings
        self.shard_map = shard_map
        self.pool = pool

    # -- helpers -----------------------------------------------------------

    def _budget(self, context: Context) -> float:
        """Seconds the node calls may take: caller's deadline less the margin."""
        remaining: float | None = context.time_remaining()
        if remaining is None or remaining > _NO_DEADLINE_S:
            remaining = self.settings.default_deadline_s
        if remaining <= 0:
            raise DeadlineExceeded("the call's deadline passed before it reached the shards")
        return max(remaining - self.settings.deadline_margin_s, remaining / 2)

    async def _unary(
        self,
        node: Node,
        call: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float,
    ) -> Resp:
        try:
            return await call(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise shard_error(node, exc) from None

    async def _owner_call(
        self,
        subject_id: str,
        method: Callable[
            [node_grpc.MatcherNodeAsyncStub], grpc.aio.UnaryUnaryMultiCallable[Req, Resp]
        ],
        request: Req,
        context: Context,
    ) -> tuple[Node, Resp]:
        """Send `request` to the owner of `subject_id`; node errors keep their code."""
        node = self.shard_map.owner(subject_id)
        try:
            return node, await self._unary(
                node, method(self.pool[node].stub), request, self._budget(context)
            )
        except ShardError as exc:
            self._log_failure(type(request).__name__.removesuffix("Request"), exc)
            if exc.trailers:
                context.set_trailing_metadata(exc.trailers)
            raise

    @staticmethod
    def _log_failure(method: str, exc: ShardError) -> None:
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

    # -- RPCs ----------------------------------------------------------------

    @async_errors
    async def Enroll(self, request: pb.EnrollRequest, context: Context) -> pb.EnrollResponse:
        self._check_enroll(request)
        node, response = await self._owner_call(
            request.subject_id, lambda stub: stub.Enroll, request, context
        )
        response.shard = node.name
        return response

    @async_errors
    async def EnrollBatch(
        self, request: pb.EnrollBatchRequest, context: Context
    ) -> pb.EnrollBatchResponse:
        items = request.items
        limit = self.settings.max_batch_subjects
        if not items:
            raise InvalidArgument("items is empty: send at least one enrollment")
        if len(items) > limit:
            raise InvalidArgument(f"items has {len(items)} enrollments, at most {limit} per call")
        results = [pb.EnrollBatchItemResult() for _ in items]
        valid: list[int] = []
        for i, item in enumerate(items):
            try:
                self._check_enroll(item, f"items[{i}].")
            except TunggalError as exc:
                results[i].code = code_number(exc.code)
                results[i].message = exc.message
            else:
                valid.append(i)
        timeout = self._budget(context)
        groups = self.shard_map.group([items[i].subject_id for i in valid])

        async def send(node: Node, positions: list[int]) -> None:
            indices = [valid[p] for p in positions]
            sub = pb.EnrollBatchRequest(items=[items[i] for i in indices])
            try:
                answer = await self._unary(node, self.pool[node].stub.EnrollBatch, sub, timeout)
            except ShardError as exc:
                self._log_failure("EnrollBatch", exc)
                for i in indices:
                    results[i].code = code_number(exc.code)
                    results[i].message = exc.message
                return
            if len(answer.results) != len(indices):
                message = (
                    f"shard {node} returned {len(answer.results)} results for {len(indices)} items"
                )
                _log.error("shard_batch_mismatch", shard=node.name, error=message)
                for i in indices:
                    results[i].code = code_number(grpc.StatusCode.INTERNAL)
                    results[i].message = message
                return
            for j, (i, result) in enumerate(zip(indices, answer.results, strict=True)):
                results[i].CopyFrom(result)
                if result.code == 0:
                    results[i].response.shard = node.name
                elif result.message.startswith(f"items[{j}]."):
                    # The node numbers items within its sub-batch; use the caller's.
                    results[i].message = f"items[{i}]." + result.message[len(f"items[{j}].") :]

        await asyncio.gather(*(send(node, pos) for node, pos in groups.items()))
        return pb.EnrollBatchResponse(results=results)

    @async_errors
    async def Delete(self, request: pb.DeleteRequest, context: Context) -> pb.DeleteResponse:
        check_subject_id(request.subject_id)
        _, response = await self._owner_call(
            request.subject_id, lambda stub: stub.Delete, request, context
        )
        return response

    @async_errors
    async def Verify(self, request: pb.VerifyRequest, context: Context) -> pb.VerifyResponse:
        check_subject_id(request.subject_id)
        decode_probe(request.probe, self.settings.dim)
        if request.HasField("threshold"):
            check_threshold(request.threshold)
        _, response = await self._owner_call(
            request.subject_id, lambda stub: stub.Verify, request, context
        )
        return response

    @async_errors
    async def GetSubject(self, request: pb.GetSubjectRequest, context: Context) -> pb.Subject:
        check_subject_id(request.subject_id)
        node, response = await self._owner_call(
            request.subject_id, lambda stub: stub.GetSubject, request, context
        )
        response.shard = node.name
        return response

    @async_errors
    async def Identify(self, request: pb.IdentifyRequest, context: Context) -> pb.IdentifyResponse:
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
            no_escalation=True,  # decided below, on the merged answer
        )
        candidates, answered, failures = await self._search_all(
            search, self._budget(context), request.require_all_shards
        )
        escalated = not request.exact and self._ambiguous(candidates)
        if escalated:
            # The best score over every shard is just under the threshold:
            # that is where a mate HNSW missed would hide. Ask exactly.
            exact = node_pb.NodeSearchRequest()
            exact.CopyFrom(search)  # the first may still sit in a batcher's queue
            exact.exact = True
            candidates, answered, failures = await self._search_all(
                exact, self._budget(context), request.require_all_shards
            )
        _log.debug(
            "identify",
            k=k,
            exact=request.exact,
            escalated=escalated,
            candidates=len(candidates),
            shards_answered=answered,
            failed_shards=[f.node.name for f in failures],
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return pb.IdentifyResponse(
            candidates=candidates,
            shards_answered=answered,
            shards_total=len(self.shard_map.nodes),
            partial=bool(failures),
            failed_shards=[f.node.name for f in failures],
        )

    def _ambiguous(self, candidates: Sequence[pb.Candidate]) -> bool:
        best = candidates[0].score if candidates else None
        return in_escalation_band(best, self.settings.verify_threshold, self.settings.escalate_band)

    async def _search_all(
        self, search: node_pb.NodeSearchRequest, timeout: float, require_all: bool
    ) -> tuple[list[pb.Candidate], int, list[ShardError]]:
        """Ask every shard; (merged top-k, shards that answered, failures).

        Raises when no shard answered, or one failed and `require_all` is set.
        """

        nodes = self.shard_map.nodes
        # Futures, not tasks: gathering them adds no task per shard.
        outcomes = await asyncio.gather(
            *(self.pool[node].searches.submit(search, timeout) for node in nodes),
            return_exceptions=True,
        )
        answers: list[tuple[str, Sequence[pb.Candidate]]] = []
        failures: list[ShardError] = []
        for node, outcome in zip(nodes, outcomes, strict=True):
            if isinstance(outcome, ShardError):
                self._log_failure("Search", outcome)
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
                    raise DeadlineExceeded(f"no shard answered within {timeout:.3f} s: {detail}")
                if codes == {grpc.StatusCode.INVALID_ARGUMENT}:
                    raise failures[0]
                raise Unavailable(f"no shard answered ({failed}): {detail}")
            if require_all:
                raise Unavailable(
                    f"{len(failures)} of {len(nodes)} shards failed ({failed}) and "
                    f"require_all_shards is set: {detail}"
                )
        return merge_candidates(answers, search.k, search.min_score), len(answers), failures


class OperationsGateway(ops_grpc.OperationsServicer):
    """tunggal.ops.v1.Operations: the operators' view of the nodes behind a gateway."""

    def __init__(self, matcher: MatcherGateway) -> None:
        self._matcher = matcher
        self.shard_map = matcher.shard_map
        self.pool = matcher.pool

    def _budget(self, context: Context) -> float:
        return self._matcher._budget(context)

    async def _unary(
        self,
        node: Node,
        call: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float,
    ) -> Resp:
        return await self._matcher._unary(node, call, request, timeout)

    _log_failure = staticmethod(MatcherGateway._log_failure)

    @async_errors
    async def Stats(self, request: ops_pb.StatsRequest, context: Context) -> ops_pb.StatsResponse:
        timeout = self._budget(context)

        async def ask(node: Node) -> ops_pb.NodeStats:
            try:
                row = await self._unary(node, self.pool[node].stub.Stats, request, timeout)
            except ShardError as exc:
                self._log_failure("Stats", exc)
                return ops_pb.NodeStats(
                    name=node.name, address=node.address, serving=False, error=exc.message
                )
            if row.name and row.name != node.name:
                row.error = f"node calls itself {row.name!r}, the gateway maps it as {node.name!r}"
            row.name = node.name
            row.address = node.address
            return row

        rows = await asyncio.gather(*(ask(node) for node in self.shard_map.nodes))
        return ops_pb.StatsResponse(nodes=rows)


class GatewayServer:
    """A started gateway: its gRPC server, health service and node channels."""

    def __init__(
        self,
        settings: GatewaySettings,
        server: grpc.aio.Server,
        servicer: MatcherGateway,
        health_servicer: Any,
        pool: NodePool,
        host: str,
        port: int,
    ) -> None:
        self.settings = settings
        self.server = server
        self.servicer = servicer
        self.health = health_servicer
        self.pool = pool
        self.host = host
        self.port = port
        self._stopped = False

    @property
    def address(self) -> str:
        """host:port a client dials (127.0.0.1 when bound to every interface)."""
        host = self.host
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, drain in-flight calls for `grace` s, close channels."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        _log.info("gateway_draining", grace_s=grace)
        await self.server.stop(grace)
        await self.pool.close()
        _log.info("gateway_stopped")

    async def wait_for_termination(self) -> None:
        """Wait until the server has stopped."""
        await self.server.wait_for_termination()


def server_options(
    settings: GatewaySettings, max_streams_per_connection: int = 0
) -> list[tuple[str, int]]:
    """Options of the gateway's own server."""
    options = [
        *grpc_message_options(settings.max_message_bytes),
        # Fail loudly if the port is taken instead of sharing it.
        ("grpc.so_reuseport", 0),
        # Accept clients' keepalive pings on idle connections.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ]
    if max_streams_per_connection > 0:
        # Calls over this wait in the client: one connection's flood cannot
        # pile up in front of the interceptors, where nothing is fair.
        options.append(("grpc.max_concurrent_streams", max_streams_per_connection))
    return options


async def serve(
    settings: GatewaySettings,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    *,
    host: str | None = None,
    port: int | None = None,
    nodes: Sequence[Node] | None = None,
    internal_secret: str | None = None,
    max_streams_per_connection: int = 0,
) -> GatewayServer:
    """Start a gateway in the running event loop and return it.

    `host`/`port` override the settings (port 0 picks a free port, see
    `.port`); `nodes` overrides ``settings.nodes``. `interceptors` run in
    order before every RPC (tenants, quotas, metrics...). `internal_secret`
    goes with every call to a node (``x-tunggal-internal``);
    `max_streams_per_connection` > 0 caps each client connection's open calls.
    """
    shard_map = ShardMap(parse_nodes(settings.nodes) if nodes is None else nodes)
    host = settings.host if host is None else host
    port = settings.port if port is None else port
    pool = NodePool(shard_map.nodes, settings, internal_secret)
    pool.connect()
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=server_options(settings, max_streams_per_connection),
    )
    servicer = MatcherGateway(settings, shard_map, pool)
    pb_grpc.add_MatcherServicer_to_server(servicer, server)
    ops_grpc.add_OperationsServicer_to_server(OperationsGateway(servicer), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (MATCHER_SERVICE, OPERATIONS_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    bind_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    try:
        bound = server.add_insecure_port(f"{bind_host}:{port}")
    except RuntimeError as exc:
        await pool.close()
        raise OSError(f"cannot listen on {bind_host}:{port}: {exc}") from exc
    if bound == 0:
        await pool.close()
        raise OSError(f"cannot listen on {bind_host}:{port}")
    await server.start()
    for service in ("", MATCHER_SERVICE, OPERATIONS_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    _log.info(
        "gateway_started",
        host=host,
        port=bound,
        nodes={n.name: n.address for n in shard_map.nodes},
        dim=settings.dim,
    )
    return GatewayServer(settings, server, servicer, health_servicer, pool, host, bound)


@dataclass(frozen=True)
class GatewayConfig:
    """Everything `run` needs: the gateway's settings and its protections."""

    settings: GatewaySettings
    tenants: TenantsSettings
    metrics: MetricsSettings
    overload: OverloadSettings
    internal_secret: str | None = None


NO_TENANTS_MESSAGE = (
    "no tenants file: pass --tenants FILE or set TUNGGAL_GATEWAY_TENANTS_FILE "
    "(format in docs/tenants.md; deploy/tenants.demo.toml has demo tenants). "
    "Only for a local experiment, --no-auth (TUNGGAL_GATEWAY_AUTH=off) serves "
    "without keys, tenants or quotas."
)


async def run(config: GatewayConfig) -> None:
    """Serve with tenants, quotas, overload protection and metrics until SIGTERM/SIGINT."""
    settings = config.settings
    registry: TenantRegistry | None = None
    if config.tenants.auth:
        if config.tenants.tenants_file is None:
            raise TenantsFileError(NO_TENANTS_MESSAGE)
        registry = TenantRegistry.from_file(config.tenants.tenants_file)
    else:
        _log.warning(
            "gateway_auth_disabled",
            detail="no API keys, tenants or quotas: every caller may call everything; "
            "for local experiments only",
            ignored_tenants_file=(
                str(config.tenants.tenants_file) if config.tenants.tenants_file else None
            ),
        )
    if config.internal_secret is None:
        _log.warning(
            "internal_auth_off",
            detail=f"{SECRET_ENV} is not set: calls to the nodes carry no internal secret",
        )
    limiter = AdaptiveLimiter(config.overload)
    metrics = GatewayMetrics()
    interceptors = build_interceptors(registry, limiter, metrics=metrics)
    metrics_server = None
    if config.metrics.metrics_port:
        metrics_server, _ = start_metrics_server(
            config.metrics.metrics_port, config.metrics.metrics_host
        )
        _log.info(
            "metrics_serving",
            url=f"http://{config.metrics.metrics_host}:{config.metrics.metrics_port}/metrics",
        )
    try:
        gateway = await serve(
            settings,
            interceptors,
            internal_secret=config.internal_secret,
            max_streams_per_connection=config.overload.overload_max_streams_per_connection,
        )
    except BaseException:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        raise
    if registry is not None:
        registry.start(config.tenants.tenants_poll_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        waiter = asyncio.ensure_future(gateway.wait_for_termination())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if stop.is_set():
            _log.info("gateway_signal")
    finally:
        await gateway.stop()
        if registry is not None:
            await registry.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags; each overrides its TUNGGAL_* environment setting."""
    parser = argparse.ArgumentParser(
        prog="tunggal-gateway",
        description="Tunggal gateway: serves tunggal.v1.Matcher over the matcher nodes.",
    )
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 50051)")
    parser.add_argument(
        "--nodes", help="matcher nodes, comma-separated name=host:port (node-0=127.0.0.1:50052)"
    )
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="log level"
    )
    parser.add_argument("--dim", type=int, help="template dimension (default 128)")
    parser.add_argument("--grace", type=float, help="drain seconds on SIGTERM (default 10)")
    parser.add_argument(
        "--tenants",
        type=Path,
        help="tenants TOML file (TUNGGAL_GATEWAY_TENANTS_FILE); required unless --no-auth",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        default=None,
        help="serve without API keys, tenants or quotas (TUNGGAL_GATEWAY_AUTH=off): "
        "for local experiments only",
    )
    parser.add_argument(
        "--metrics-port", type=int, help="port of /metrics (default 9464; 0 turns it off)"
    )
    parser.add_argument("--metrics-host", help="interface of /metrics (default 127.0.0.1)")
    return parser


def _overrides(pairs: Sequence[tuple[str, object]]) -> dict[str, Any]:
    return {key: value for key, value in pairs if value is not None}


def config_from_args(argv: Sequence[str] | None = None) -> GatewayConfig:
    """GatewayConfig from the environment, overridden by the flags in `argv`.

    Exits with a usage error when authentication is on and no tenants file
    is given.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = GatewaySettings(
            **_overrides(
                (
                    ("host", args.host),
                    ("port", args.port),
                    ("nodes", args.nodes),
                    ("log_level", args.log_level),
                    ("dim", args.dim),
                    ("grace_s", args.grace),
                )
            )
        )
        parse_nodes(settings.nodes)
        tenants = TenantsSettings(
            **_overrides(
                (
                    ("tenants_file", args.tenants),
                    ("auth", False if args.no_auth else None),
                )
            )
        )
        metrics = MetricsSettings(
            **_overrides((("metrics_port", args.metrics_port), ("metrics_host", args.metrics_host)))
        )
        overload = OverloadSettings()
    except (ValidationError, ValueError) as exc:
        parser.error(str(exc))
    if tenants.auth and tenants.tenants_file is None:
        parser.error(NO_TENANTS_MESSAGE)
    return GatewayConfig(settings, tenants, metrics, overload, internal_secret())


def settings_from_args(argv: Sequence[str] | None = None) -> GatewaySettings:
    """GatewaySettings from the environment, overridden by the flags in `argv`."""
    return config_from_args(argv).settings


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``tunggal-gateway``)."""
    config = config_from_args(argv)
    configure_logging(config.settings.log_level, service="gateway", cache=True)
    try:
        asyncio.run(run(config))
    except (TenantsFileError, OSError) as exc:
        _log.error("gateway_start_failed", error=str(exc))
        print(f"tunggal-gateway: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
