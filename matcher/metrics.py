"""Prometheus metrics of a matcher node.

Gallery state is read at scrape time by a collector (no cost on the hot
path); per-call latency goes to a histogram observed by the servicer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

_GAUGES = {
    "subjects": "Subjects stored on this shard.",
    "templates": "Templates stored on this shard.",
    "capacity": "Template slots allocated.",
    "ef_search": "HNSW beam width in use (self-calibrated).",
    "calibration_hit_rate": "HNSW rank-1 mate hits relative to exact at the last calibration.",
    "calibrated_templates": "Gallery size at the last calibration.",
    "last_seq": "Sequence number of the newest durable change.",
    "snapshot_seq": "Sequence number of the newest snapshot.",
    "index_bytes": "Bytes of the HNSW index.",
    "matrix_bytes": "Bytes of the exact-search matrix.",
}


class GalleryCollector(Collector):
    """Exposes `stats()` (a gallery's) as tunggal_node_* metrics."""

    def __init__(self, node: str, stats: Callable[[], Mapping[str, int | float | bool]]) -> None:
        self._node = node
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        values = self._stats()
        for key, doc in _GAUGES.items():
            family = GaugeMetricFamily(f"tunggal_node_{key}", doc, labels=["node"])
            family.add_metric([self._node], float(values.get(key, 0)))
            yield family
        escalations = CounterMetricFamily(
            "tunggal_node_escalations",
            "Identify searches re-checked by exact search (ambiguity band).",
            labels=["node"],
        )
        escalations.add_metric([self._node], float(values.get("escalations", 0)))
        yield escalations


class NodeMetrics:
    """The node's registry: call latency by method and outcome, gallery gauges."""

    def __init__(self, node: str, registry: CollectorRegistry | None = None) -> None:
        self.node = node
        self.registry = registry or CollectorRegistry()
        self.latency = Histogram(
            "tunggal_node_call_seconds",
            "Time to serve a MatcherNode call.",
            ["node", "method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch(self, stats: Callable[[], Mapping[str, int | float | bool]]) -> None:
        """Expose a gallery's stats at every scrape."""
        self.registry.register(GalleryCollector(self.node, stats))


class LatencyInterceptor(_ServerInterceptor):
    """Times every unary MatcherNode call into `NodeMetrics.latency`."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary
        latency = self._metrics.latency
        node = self._metrics.node

        def timed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return inner(request, context)
            except Exception:
                found = getattr(context, "code", lambda: None)()
                code = found.name if isinstance(found, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                latency.labels(node, method, code).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
