"""Prometheus metrics of the gateway: its public calls, per tenant and method,
its overload limiter, and the Identify escalations it decides.

Labels are bounded: ``tenant`` is a configured tenant id or ``-``
(unauthenticated), ``method`` a Matcher method short name or ``other``.
`start_metrics_server` serves ``/metrics`` over HTTP on its own thread
(``TUNGGAL_GATEWAY_METRICS_HOST``/``_PORT``, `tunggal.settings.GatewaySettings`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class LimiterView(Protocol):
    """What the overload gauges read (gateway.overload.AdaptiveLimiter has it)."""

    @property
    def limit(self) -> int:
        """Calls admitted at once now."""

    @property
    def in_flight(self) -> int:
        """Calls admitted and not yet ended."""

    @property
    def queued(self) -> int:
        """Calls waiting for a slot."""


class IdentifyCountsView(Protocol):
    """What the escalation counters read (gateway.fanout.IdentifyCounts has it)."""

    @property
    def calls(self) -> int:
        """Identify calls that reached the shards."""

    @property
    def escalations(self) -> int:
        """Of those, the calls re-asked with exact search."""


class _IdentifyCollector:
    """Reports an `IdentifyCountsView` as two counters at scrape time."""

    def __init__(self, counts: IdentifyCountsView) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "tunggal_gateway_identify_calls",
            "Identify calls that reached the shards.",
            value=self._counts.calls,
        )
        yield CounterMetricFamily(
            "tunggal_gateway_identify_escalations",
            "Identify calls re-asked by exact search because the best merged HNSW score "
            "fell in the escalation band below the verify threshold.",
            value=self._counts.escalations,
        )


class GatewayMetrics:
    """The gateway's metric families, registered in `registry` (default: the global one)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self._registry = registry
        labels = ("tenant", "method")
        self.calls = Counter(
            "tunggal_gateway_calls",
            "Public calls finished, by status code.",
            (*labels, "code"),
            registry=registry,
        )
        self.rejections = Counter(
            "tunggal_gateway_rejections",
            "Calls rejected by the gateway before reaching the matcher, by reason.",
            (*labels, "reason"),
            registry=registry,
        )
        self.shadow_rejections = Counter(
            "tunggal_gateway_shadow_rejections",
            "Calls a shadow-mode quota would have rejected (admitted anyway).",
            (*labels, "reason"),
            registry=registry,
        )
        self.latency = Histogram(
            "tunggal_gateway_call_latency_seconds",
            "Latency of public calls as seen by the gateway.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "tunggal_gateway_in_flight",
            "Public calls in progress (including those queued).",
            labels,
            registry=registry,
        )
        self.overload_limit = Gauge(
            "tunggal_gateway_overload_limit",
            "Adaptive concurrency limit now in force.",
            registry=registry,
        )
        self.overload_in_flight = Gauge(
            "tunggal_gateway_overload_in_flight",
            "Calls holding an overload slot.",
            registry=registry,
        )
        self.overload_queued = Gauge(
            "tunggal_gateway_overload_queued",
            "Calls waiting for an overload slot.",
            registry=registry,
        )

    def watch_limiter(self, limiter: LimiterView) -> None:
        """Make the overload gauges read `limiter` at scrape time."""
        self.overload_limit.set_function(lambda: float(limiter.limit))
        self.overload_in_flight.set_function(lambda: float(limiter.in_flight))
        self.overload_queued.set_function(lambda: float(limiter.queued))

    def watch_identify(self, counts: IdentifyCountsView) -> None:
        """Report `counts` as tunggal_gateway_identify_calls_total and
        tunggal_gateway_identify_escalations_total (once per registry)."""
        self._registry.register(_IdentifyCollector(counts))


def start_metrics_server(
    port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics on `host`:`port` from a daemon thread; `server.shutdown()` stops it."""
    return _start_http_server(port, addr=host, registry=registry)
