"""Matcher node process: `tunggal-node` / `python -m matcher.server`.

Start-up order: the gRPC server starts first with health NOT_SERVING (so
orchestrators see it alive), the gallery loads (snapshot + log replay), then
health turns SERVING. On SIGTERM/SIGINT: health NOT_SERVING first, refuse
new work, drain in-flight calls for `grace_s`, write a snapshot, stop.

Without the internal secret (TUNGGAL_INTERNAL_SECRET) a node serves any
caller, so it refuses to start on a host beyond loopback (exit 1, one line on
stderr) unless TUNGGAL_NODE_ALLOW_UNPROTECTED_NETWORK=true, which it then
logs at error level (`check_node_exposure`, tunggal/exposure.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import prometheus_client
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from matcher.gallery import Gallery
from matcher.gallery.calibration import CalibrationStopped
from matcher.metrics import LatencyInterceptor, NodeMetrics
from matcher.service import MatcherNodeService
from tunggal.exposure import UnprotectedBindError, check_exposure
from tunggal.internal_auth import SECRET_ENV, InternalAuthServerInterceptor
from tunggal.logs import configure_logging
from tunggal.node.v1 import node_pb2 as node_pb
from tunggal.node.v1 import node_pb2_grpc as node_grpc
from tunggal.settings import NodeSettings, grpc_message_options, server_keepalive_options
from tunggal.signals import wait_for

_log = structlog.get_logger("matcher.server")
SERVICE_NAME = node_pb.DESCRIPTOR.services_by_name["MatcherNode"].full_name
ALLOW_UNPROTECTED_ENV = "TUNGGAL_NODE_ALLOW_UNPROTECTED_NETWORK"


class NodeServer:
    """A running matcher node: gRPC server, health, gallery, maintenance thread."""

    def __init__(
        self, settings: NodeSettings, interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] = ()
    ) -> None:
        self.settings = settings
        self.service = MatcherNodeService(settings)
        self.health = health.HealthServicer()
        self.metrics = NodeMetrics(settings.name)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="rpc"),
            interceptors=[*interceptors, LatencyInterceptor(self.metrics)],
            options=[
                *grpc_message_options(settings.max_message_bytes),
                *server_keepalive_options(),
                ("grpc.so_reuseport", 0),
            ],
        )
        node_grpc.add_MatcherNodeServicer_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = self.server.add_insecure_port(f"{settings.host}:{settings.port}")
        self.gallery: Gallery | None = None
        self._stopped = threading.Event()
        self._stopping = threading.Event()
        self._maintenance = threading.Thread(target=self._maintenance_loop, daemon=True)

    def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        self.health.set("", status)
        self.health.set(SERVICE_NAME, status)

    def start(self) -> None:
        """Serve at once (NOT_SERVING), load the gallery, then serve it."""
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.start()
        _log.info("node_listening", name=self.settings.name, port=self.port)
        self.gallery = Gallery(self.settings)
        self.service.attach(self.gallery)
        self.metrics.watch(self.gallery.stats)
        if self.settings.metrics_port:
            prometheus_client.start_http_server(
                self.settings.metrics_port, self.settings.metrics_host, self.metrics.registry
            )
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._maintenance.start()
        _log.info("node_serving", name=self.settings.name, port=self.port)

    def _maintenance_loop(self) -> None:
        while not self._stopping.wait(1.0):
            gallery = self.gallery
            if gallery is not None:
                try:
                    gallery.maintain(stop=self._stopping)
                except CalibrationStopped:
                    _log.info("calibration_stopped", detail="the node is stopping; ef unchanged")
                except Exception:  # noqa: BLE001 - logged; the next pass tries again
                    _log.exception("maintenance_failed")

    def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, refuse new work, drain, snapshot, close."""
        if self._stopped.is_set():
            return
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._stopping.set()  # a calibration in progress gives up: the drain gets the CPU
        self.service.drain()
        self.server.stop(self.settings.grace_s if grace is None else grace).wait()
        self._stopped.set()
        if self._maintenance.is_alive():
            self._maintenance.join()
        if self.gallery is not None:
            self.gallery.close(snapshot=True)
        _log.info("node_stopped", name=self.settings.name)

    def wait(self) -> None:
        """Block until stopped."""
        self._stopped.wait()


def parse_args(argv: list[str] | None = None) -> NodeSettings:
    """NodeSettings from env vars, overridden by command-line flags."""
    parser = argparse.ArgumentParser(prog="tunggal-node", description=__doc__)
    parser.add_argument("--name")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--dim", type=int)
    parser.add_argument("--ef-search", type=int)
    parser.add_argument("--log-level")
    parser.add_argument("--metrics-port", type=int, help="serve /metrics here (0 = off)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    return NodeSettings(**overrides)


def check_node_exposure(settings: NodeSettings) -> None:
    """Refuse (`tunggal.exposure.UnprotectedBindError`) to serve without the internal
    secret beyond loopback; when the operator allowed it, log the risk at error level."""
    secret = settings.internal_secret_value()
    allowed = check_exposure(
        host=settings.host,
        protected=secret is not None,
        allow_unprotected=settings.allow_unprotected_network,
        what=f"internal authentication off ({SECRET_ENV} is not set)",
        remedy=f"Set {SECRET_ENV} (the same value on the gateway and every node)",
        flag=ALLOW_UNPROTECTED_ENV,
    )
    if allowed:
        _log.error(
            "node_unprotected_network",
            host=settings.host,
            detail=f"{SECRET_ENV} is not set and the node listens beyond loopback: any caller "
            "on the network may enroll, delete and search this shard without the gateway "
            f"({ALLOW_UNPROTECTED_ENV}=true); never in production",
        )
    elif secret is None:
        _log.warning("internal_auth_off", detail=f"{SECRET_ENV} is not set: any caller is served")


def main(argv: list[str] | None = None) -> None:
    """Run one matcher node until SIGTERM/SIGINT."""
    settings = parse_args(argv)
    configure_logging(settings.log_level, service=f"node:{settings.name}", cache=True)
    try:
        check_node_exposure(settings)
    except UnprotectedBindError as exc:
        _log.error("node_refused_to_start", reason=str(exc))
        sys.stderr.write(f"tunggal-node: error: {exc}\n")
        raise SystemExit(1) from None
    secret = settings.internal_secret_value()
    node = NodeServer(settings, [InternalAuthServerInterceptor(secret)] if secret else [])
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        _log.info("signal", signal=signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    node.start()
    wait_for(stop_requested)
    node.stop()


if __name__ == "__main__":
    main()
