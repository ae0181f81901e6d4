"""Prometheus metrics of the gateway's public calls, per tenant and method.

Labels are bounded: ``tenant`` is a configured tenant id or ``-``
(unauthenticated), ``method`` a Matcher method short name or ``other``.
`start_metrics_server` serves ``/metrics`` over HTTP on its own thread.
"""

from __future__ import annotations

import threading
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _start_http_server
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class MetricsSettings(BaseSettings):
    """Where /metrics is served (env prefix ``TUNGGAL_GATEWAY_``)."""

    model_config = SettingsConfigDict(env_prefix="TUNGGAL_GATEWAY_", extra="ignore")

    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9464, ge=0, le=65535, description="0 disables /metrics.")


class LimiterView(Protocol):
    """What the overload gauges read (gateway.overload.AdaptiveLimiter has it)."""

    @property
    def limit(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def queued(self) -> int: ...


class GatewayMetrics:
    """The gateway's metric families, registered in `registry` (default: the global one)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
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


def start_metrics_server(
    port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics on `host`:`port` from a daemon thread; `server.shutdown()` stops it."""
    return _start_http_server(port, addr=host, registry=registry)
