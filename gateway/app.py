"""One gateway process: its gRPC server and everything around it.

`serve` starts the gRPC server (tunggal.v1.Matcher, tunggal.ops.v1.Operations,
health, reflection) over channels to the nodes, with the interceptors it is
given; tests call it directly: ``server = await serve(settings, port=0)``,
then ``server.port`` and ``await server.stop()``. `run` is the whole process
and the only place that builds its protections: it refuses to serve with
authentication off beyond loopback (unless allowed), loads the tenants file,
builds the overload limiter, the metrics (/metrics on ``metrics_port``, 0 =
off) and the interceptors (`gateway.interceptors`), and handles the signals:
SIGTERM/SIGINT drain and stop, SIGHUP reloads the tenants file (which is also
polled for changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Sequence
from typing import Any, Final
from wsgiref.simple_server import WSGIServer

import grpc
import grpc.aio
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.fanout import Fanout
from gateway.interceptors import MATCHER_SERVICE, OPERATIONS_SERVICE, build_interceptors
from gateway.metrics import GatewayMetrics, start_metrics_server
from gateway.nodes import NodePool
from gateway.overload import AdaptiveLimiter
from gateway.servicer import GatewayMatcher, GatewayOperations
from gateway.tenants import TenantRegistry, TenantsFileError
from shard.shardmap import Node, ShardMap, parse_nodes
from tunggal.exposure import check_exposure
from tunggal.internal_auth import SECRET_ENV
from tunggal.ops.v1 import ops_pb2_grpc as ops_grpc
from tunggal.settings import GatewaySettings, grpc_message_options
from tunggal.v1 import tunggal_pb2_grpc as pb_grpc

_log = structlog.get_logger("gateway")

ALLOW_UNPROTECTED_ENV: Final = "TUNGGAL_GATEWAY_ALLOW_UNPROTECTED_NETWORK"
NO_TENANTS_MESSAGE: Final = (
    "no tenants file: pass --tenants FILE or set TUNGGAL_GATEWAY_TENANTS_FILE "
    "(format in docs/tenants.md; deploy/tenants.demo.toml has demo tenants). "
    "Only for a local experiment, --no-auth (TUNGGAL_GATEWAY_AUTH=off) serves "
    "without keys, tenants or quotas."
)


class GatewayServer:
    """A started gateway: its gRPC server, health service, fan-out and node channels."""

    def __init__(
        self,
        settings: GatewaySettings,
        server: grpc.aio.Server,
        fanout: Fanout,
        health_servicer: Any,
        host: str,
        port: int,
    ) -> None:
        self.settings = settings
        self.server = server
        self.fanout = fanout
        self.health = health_servicer
        self.host = host
        self.port = port
        self._stopped = False

    @property
    def address(self) -> str:
        """host:port a client dials (127.0.0.1 when bound to every interface)."""
        host = self.host
        if host in ("0.0.0.0", "::", "[::]", ""):  # noqa: S104  compares, binds nothing
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
        await self.fanout.pool.close()
        _log.info("gateway_stopped")

    async def wait_for_termination(self) -> None:
        """Wait until the server has stopped."""
        await self.server.wait_for_termination()


def server_options(settings: GatewaySettings) -> list[tuple[str, int]]:
    """Options of the gateway's own server."""
    options = [
        *grpc_message_options(settings.max_message_bytes),
        # Fail loudly if the port is taken instead of sharing it.
        ("grpc.so_reuseport", 0),
        # Accept clients' keepalive pings on idle connections.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ]
    if settings.overload_max_streams_per_connection > 0:
        # Calls over this wait in the client: one connection's flood cannot
        # pile up in front of the interceptors, where nothing is fair.
        options.append(
            ("grpc.max_concurrent_streams", settings.overload_max_streams_per_connection)
        )
    return options


async def serve(
    settings: GatewaySettings,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    *,
    host: str | None = None,
    port: int | None = None,
    nodes: Sequence[Node] | None = None,
) -> GatewayServer:
    """Start a gateway in the running event loop and return it.

    `host`/`port` override the settings (port 0 picks a free port, see
    `.port`); `nodes` overrides ``settings.nodes``. `interceptors` run in
    order before every RPC (tenants, quotas, metrics...).
    """
    shard_map = ShardMap(parse_nodes(settings.nodes) if nodes is None else nodes)
    host = settings.host if host is None else host
    port = settings.port if port is None else port
    pool = NodePool(shard_map.nodes, settings)
    pool.connect()
    fanout = Fanout(settings, shard_map, pool)
    server = grpc.aio.server(interceptors=list(interceptors), options=server_options(settings))
    pb_grpc.add_MatcherServicer_to_server(GatewayMatcher(settings, fanout), server)
    ops_grpc.add_OperationsServicer_to_server(GatewayOperations(settings, fanout), server)
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
    return GatewayServer(settings, server, fanout, health_servicer, host, bound)


def check_gateway_exposure(settings: GatewaySettings) -> None:
    """Refuse (`tunggal.exposure.UnprotectedBindError`) to serve with authentication
    off beyond loopback; when the operator allowed it, log the risk at error level."""
    allowed = check_exposure(
        host=settings.host,
        protected=settings.auth,
        allow_unprotected=settings.allow_unprotected_network,
        what="authentication off (--no-auth / TUNGGAL_GATEWAY_AUTH=off)",
        remedy="Turn authentication on with a tenants file (--tenants FILE or "
        "TUNGGAL_GATEWAY_TENANTS_FILE)",
        flag=ALLOW_UNPROTECTED_ENV,
    )
    if allowed:
        _log.error(
            "gateway_unprotected_network",
            host=settings.host,
            detail="authentication is off and the gateway listens beyond loopback: any caller "
            "on the network may enroll, delete and search every subject "
            f"({ALLOW_UNPROTECTED_ENV}=true); never in production",
        )


def open_tenants(settings: GatewaySettings) -> TenantRegistry | None:
    """The tenants registry, or None when authentication is off; raises TenantsFileError."""
    if settings.auth:
        if settings.tenants_file is None:
            raise TenantsFileError(NO_TENANTS_MESSAGE)
        return TenantRegistry.from_file(settings.tenants_file)
    _log.warning(
        "gateway_auth_disabled",
        detail="no API keys, tenants or quotas: every caller may call everything; "
        "for local experiments only",
        ignored_tenants_file=str(settings.tenants_file) if settings.tenants_file else None,
    )
    return None


def _start_metrics(settings: GatewaySettings) -> WSGIServer | None:
    if not settings.metrics_port:
        return None
    metrics_server, _ = start_metrics_server(settings.metrics_port, settings.metrics_host)
    _log.info(
        "metrics_serving",
        url=f"http://{settings.metrics_host}:{settings.metrics_port}/metrics",
    )
    return metrics_server


def _stop_metrics(metrics_server: WSGIServer | None) -> None:
    if metrics_server is not None:
        metrics_server.shutdown()
        metrics_server.server_close()


async def run(settings: GatewaySettings) -> None:
    """Serve with tenants, quotas, overload protection and metrics until SIGTERM/SIGINT.

    Raises UnprotectedBindError, TenantsFileError or OSError when it cannot start.
    """
    check_gateway_exposure(settings)
    registry = open_tenants(settings)
    if settings.internal_secret is None:
        _log.warning(
            "internal_auth_off",
            detail=f"{SECRET_ENV} is not set: calls to the nodes carry no internal secret",
        )
    limiter = AdaptiveLimiter(settings)
    metrics = GatewayMetrics()
    interceptors = build_interceptors(registry, limiter, metrics=metrics)
    metrics_server = _start_metrics(settings)
    try:
        gateway = await serve(settings, interceptors)
    except BaseException:
        _stop_metrics(metrics_server)
        raise
    metrics.watch_identify(gateway.fanout.counts)
    stop = asyncio.Event()
    handlers: dict[signal.Signals, Callable[[], object]] = {
        signal.SIGTERM: stop.set,
        signal.SIGINT: stop.set,
    }
    if registry is not None:
        registry.start(settings.tenants_poll_s)
        handlers[signal.SIGHUP] = registry.reload
    loop = asyncio.get_running_loop()
    for sig, handler in handlers.items():
        loop.add_signal_handler(sig, handler)
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
        _stop_metrics(metrics_server)
        # Last: a second SIGTERM during the drain must not kill the process.
        for sig in handlers:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
