"""Prometheus metrics of a matcher node.

Gallery state is read at scrape time by a collector (no cost on the hot
path); per-call latency goes to a histogram observed by the servicer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from matcher.gallery import GalleryStats

if TYPE_CHECKING:
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

_GAUGES: tuple[tuple[str, str, Callable[[GalleryStats], float]], ...] = (
    ("subjects", "Subjects stored on this shard.", lambda s: s.subjects),
    ("templates", "Templates stored on this shard.", lambda s: s.templates),
    ("capacity", "Template slots allocated.", lambda s: s.capacity),
    ("ef_search", "HNSW beam width in use (self-calibrated).", lambda s: s.ef_search),
    (
        "calibration_hit_rate",
        "HNSW rank-1 mate hits relative to exact at the last calibration.",
        lambda s: s.calibration_hit_rate,
    ),
    (
        "calibrated_templates",
        "Gallery size at the last calibration.",
        lambda s: s.calibrated_templates,
    ),
    (
        "calibrated_timestamp_seconds",
        "Unix time of the last calibration (0: never).",
        lambda s: s.calibrated_at,
    ),
    ("last_seq", "Sequence number of the newest durable change.", lambda s: s.last_seq),
    ("snapshot_seq", "Sequence number of the newest snapshot.", lambda s: s.snapshot_seq),
    ("index_bytes", "Bytes of the HNSW index.", lambda s: s.index_bytes),
    ("matrix_bytes", "Bytes of the exact-search matrix.", lambda s: s.matrix_bytes),
)


class GalleryCollector(Collector):
    """Exposes `stats()` (a gallery's) as tunggal_node_* metrics."""

    def __init__(self, node: str, stats: Callable[[], GalleryStats]) -> None:
        self._node = node
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The gallery's gauges and its escalation counter, read now."""
        values = self._stats()
        for name, doc, value in _GAUGES:
            family = GaugeMetricFamily(f"tunggal_node_{name}", doc, labels=["node"])
            family.add_metric([self._node], float(value(values)))
            yield family
        escalations = CounterMetricFamily(
            "tunggal_node_escalations",
            "Identify searches re-checked by exact search (ambiguity band).",
            labels=["node"],
        )
        escalations.add_metric([self._node], float(values.escalations))
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

    def watch(self, stats: Callable[[], GalleryStats]) -> None:
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
        """The method's handler, timed (unary-unary ones; others as they are)."""
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
