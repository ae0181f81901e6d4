"""Typed settings for every Tunggal process, in one place.

Each field can be overridden by an environment variable: the class's prefix
plus the field name in upper case, e.g. ``TUNGGAL_DIM=512``,
``TUNGGAL_NODE_EF_SEARCH=200``, ``TUNGGAL_GATEWAY_PORT=6000``. Command-line
flags of the console scripts override both. README.md lists them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024
MIN_PING_INTERVAL_S = 10.0


def _shared(name: str, default: Any, **kwargs: Any) -> Any:
    """A field read from ``TUNGGAL_<NAME>`` in every process, whatever its prefix."""
    return Field(default, validation_alias=f"TUNGGAL_{name.upper()}", **kwargs)


class MatchingSettings(BaseSettings):
    """Settings every process must agree on (env prefix ``TUNGGAL_``)."""

    model_config = SettingsConfigDict(env_prefix="TUNGGAL_", extra="ignore", populate_by_name=True)

    dim: int = _shared(
        "dim", 128, ge=2, le=4096, description="Template dimension (float32 values)."
    )
    verify_threshold: float = _shared(
        "verify_threshold",
        0.50,
        gt=-1.0,
        le=1.0,
        description="Default cosine threshold of a Verify match.",
    )
    max_k: int = _shared(
        "max_k", 100, ge=1, le=10_000, description="Largest k an Identify may ask."
    )
    max_templates_per_enroll: int = _shared(
        "max_templates_per_enroll", 32, ge=1, description="Templates in one Enroll."
    )
    max_batch_subjects: int = _shared(
        "max_batch_subjects", 2_000, ge=1, description="Items in one EnrollBatch."
    )
    max_message_bytes: int = _shared(
        "max_message_bytes",
        16 * MiB,
        ge=64 * 1024,
        description="Largest gRPC message sent or received.",
    )
    log_level: str = _shared("log_level", "info", description="debug, info, warning or error.")
    internal_secret: SecretStr | None = _shared(
        "internal_secret",
        None,
        description="Shared gateway-to-node secret (metadata x-tunggal-internal); the same "
        "value on the gateway and every node. SecretStr: never printed in a repr or a log.",
    )

    @field_validator("internal_secret")
    @classmethod
    def _blank_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        """Blank is unset; surrounding whitespace (a Secret file's newline) is dropped."""
        stripped = value.get_secret_value().strip() if value is not None else ""
        return SecretStr(stripped) if stripped else None

    def internal_secret_value(self) -> str | None:
        """The internal secret in clear (to send or compare it), None when unset."""
        return self.internal_secret.get_secret_value() if self.internal_secret else None


class NodeSettings(MatchingSettings):
    """A matcher node (env prefix ``TUNGGAL_NODE_`` for its own fields)."""

    model_config = SettingsConfigDict(env_prefix="TUNGGAL_NODE_", extra="ignore")

    name: str = Field("node-0", description="Shard name; hashed by the shard map.")
    host: str = "127.0.0.1"
    port: int = Field(50052, ge=1, le=65535)
    data_dir: Path = Field(Path("data/node-0"), description="Where the node keeps its files.")
    hnsw_m: int = Field(
        32,
        ge=4,
        le=128,
        description="HNSW graph degree M. 32: the calibrated ef meets the target at a "
        "fraction of M=16's (docs/BENCHMARKS.md, HNSW degree M).",
    )
    ef_construction: int = Field(200, ge=8, description="HNSW build beam width.")
    ef_search: int = Field(
        128, ge=8, description="HNSW search beam width until calibration picks one."
    )
    calibrate: bool = Field(True, description="Pick ef by measuring HNSW against exact search.")
    calibration_target: float = Field(
        0.999, gt=0, le=1, description="Required HNSW rank-1 mate hits relative to exact's."
    )
    calibration_probes: int = Field(
        20_000,
        ge=50,
        description="Probes per calibration run (at most the gallery's size). 20,000 halve the "
        "spread of the chosen ef between draws that 5000 showed "
        "(docs/BENCHMARKS.md, calibration probes).",
    )
    calibration_genuine: float = Field(
        0.68, gt=0, lt=1, description="Mean genuine cosine the calibration probes imitate."
    )
    calibration_growth: float = Field(
        1.5, gt=1, description="Re-calibrate when the gallery grew (or shrank) by this factor."
    )
    calibration_coverage: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Once growth settles, re-calibrate unless the ef in force was measured on "
        "at least this fraction of the live gallery.",
    )
    calibration_quiet_s: float = Field(
        30.0,
        ge=0,
        description="Growth has settled when the gallery's size stayed within 1 % this long.",
    )
    calibration_min_templates: int = Field(
        1000, ge=1, description="Smallest gallery worth calibrating."
    )
    escalate_band: float = Field(
        0.05,
        ge=0,
        lt=2,
        description="Identify re-checks exactly when HNSW's best score is within this much "
        "below verify_threshold (0 = never).",
    )
    exact_dtype: Literal["int8", "float32", "float16"] = Field(
        "int8",
        description="Storage of the exact-search matrix. int8 (dim + 12 bytes a row) stays "
        "exact (matcher/quantized.py) and runs on the CPU; float32 (4 dim + 5 bytes) is the "
        "one for a GPU; float16 halves it, scores within 5e-4 of float32's "
        "(docs/BENCHMARKS.md, exact engines).",
    )
    initial_capacity: int = Field(100_000, ge=16, description="Slots before the first growth.")
    fetch_factor: int = Field(
        3, ge=1, description="Templates fetched per wanted subject before the per-subject merge."
    )
    snapshot_every_changes: int = Field(
        200_000, ge=1, description="Write a snapshot after this many durable changes."
    )
    snapshot_interval_s: float = Field(
        600.0, gt=0, description="...or after this long with any change."
    )
    snapshots_kept: int = Field(2, ge=1, description="Snapshots kept on disk (newest first).")
    workers: int = Field(8, ge=1, description="gRPC worker threads.")
    index_threads: int = Field(2, ge=1, description="Threads hnswlib uses for batch inserts.")
    search_threads: int = Field(
        0,
        ge=0,
        description="Threads a SearchBatch's HNSW queries are spread over (the batch is cut "
        "into one part per thread); 0 = one per CPU core.",
    )
    max_search_batch: int = Field(256, ge=1, description="Most searches in one SearchBatch.")
    request_ttl_s: float = Field(
        86_400.0, gt=0, description="How long an Enroll request_id is remembered."
    )
    grace_s: float = Field(10.0, ge=0, description="Drain time on SIGTERM before stopping.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of /metrics; 0 = off.")
    metrics_host: str = Field("127.0.0.1", description="Address /metrics listens on.")
    allow_unprotected_network: bool = Field(
        False,
        description="Serve without TUNGGAL_INTERNAL_SECRET on a non-loopback host (any caller "
        "could enroll, delete and search). Off: such a node refuses to start "
        "(tunggal/exposure.py). Never in production.",
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()


class GatewaySettings(MatchingSettings):
    """The gateway (env prefix ``TUNGGAL_GATEWAY_`` for its own fields)."""

    model_config = SettingsConfigDict(env_prefix="TUNGGAL_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=1, le=65535)
    nodes: str = Field(
        "node-0=127.0.0.1:50052,node-1=127.0.0.1:50053",
        description="Comma-separated name=host:port of every matcher node.",
    )
    default_deadline_s: float = Field(
        10.0, gt=0, description="Deadline used for calls that arrive without one."
    )
    deadline_margin_s: float = Field(
        0.05, ge=0, description="Kept back from the caller's deadline to merge and answer."
    )
    keepalive_s: float = Field(
        20.0,
        ge=MIN_PING_INTERVAL_S,
        description="HTTP/2 keepalive ping interval to nodes (nodes accept one per 10 s).",
    )
    grace_s: float = Field(10.0, ge=0, description="Drain time on SIGTERM before stopping.")
    escalate_band: float = Field(
        0.05,
        ge=0,
        lt=2,
        description="Identify re-asks every shard exactly when the best merged HNSW score is "
        "within this much below verify_threshold (0 = never).",
    )
    search_batch: int = Field(
        32,
        ge=1,
        le=256,
        description="Most Identify searches coalesced into one SearchBatch per node "
        "(1 = one call per search).",
    )
    search_batches_in_flight: int = Field(
        1,
        ge=1,
        description="SearchBatch calls in flight per node; later searches wait and join. "
        "1 makes the largest batches and served more Identify/s at less CPU per call than 2 "
        "on 2-core nodes (docs/BENCHMARKS.md, SearchBatch in flight).",
    )
    # Tenants: who may call what (gateway/tenants.py, docs/tenants.md).
    tenants_file: Path | None = Field(
        None, description="Tenants TOML file; required unless auth is off (docs/tenants.md)."
    )
    tenants_poll_s: float = Field(
        2.0, gt=0, description="How often the tenants file is checked for changes."
    )
    auth: bool = Field(
        True,
        description="off: no API keys, tenants or quotas (local experiments only; the gateway "
        "then needs no tenants file).",
    )
    allow_unprotected_network: bool = Field(
        False,
        description="Serve with authentication off on a non-loopback host (any caller on the "
        "network could enroll, delete and search). Off: such a gateway refuses to start "
        "(tunggal/exposure.py). Never in production.",
    )
    # Prometheus /metrics (gateway/metrics.py).
    metrics_port: int = Field(9464, ge=0, le=65535, description="Port of /metrics; 0 = off.")
    metrics_host: str = Field("127.0.0.1", description="Address /metrics listens on.")
    # Overload protection: the adaptive concurrency limit (gateway/overload.py).
    overload_min_limit: int = Field(4, ge=1, description="The limit never goes below this.")
    overload_initial_limit: int = Field(64, ge=1, description="Concurrent calls at start.")
    overload_max_limit: int = Field(1024, ge=1, description="The limit never goes above this.")
    overload_max_queue: int = Field(256, ge=0, description="Calls waiting for a slot, at most.")
    overload_max_queue_wait_s: float = Field(
        2.0, gt=0, description="Longest a call waits for a slot (its deadline may cut it)."
    )
    overload_batch_queue_share: float = Field(
        0.5, gt=0, le=1, description="Batch calls queue only while the queue is under this share."
    )
    overload_normal_queue_share: float = Field(
        0.9, gt=0, le=1, description="Normal calls queue only while the queue is under this."
    )
    overload_latency_tolerance: float = Field(
        2.0, gt=1, description="Service time over baseline * this counts as overload."
    )
    overload_latency_slack_s: float = Field(
        0.005, ge=0, description="...and only when it is also this much over the baseline."
    )
    overload_backoff: float = Field(
        0.9, gt=0, lt=1, description="Multiplicative decrease of the limit on overload."
    )
    overload_initial_service_s: float = Field(
        0.05, gt=0, description="Service time assumed before any call has finished."
    )
    overload_deadline_margin_s: float = Field(
        0.01, ge=0, description="A queued call gives up this long before its deadline."
    )
    overload_max_streams_per_connection: int = Field(
        0,
        ge=0,
        description="Calls one client connection may have open at the gateway at once "
        "(HTTP/2 MAX_CONCURRENT_STREAMS; more wait in the client); 0: no limit.",
    )

    @model_validator(mode="after")
    def _limits_ordered(self) -> Self:
        if not self.overload_min_limit <= self.overload_initial_limit <= self.overload_max_limit:
            raise ValueError(
                "need overload_min_limit <= overload_initial_limit <= overload_max_limit"
            )
        return self


def grpc_message_options(max_bytes: int) -> list[tuple[str, int]]:
    """Channel/server options that set both message size limits."""
    return [
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
    ]


def server_keepalive_options() -> list[tuple[str, int]]:
    """Server options accepting clients' keepalive pings, even between calls.

    Pings closer than MIN_PING_INTERVAL_S apart are still refused, so a
    misbehaving client cannot flood a server with them.
    """
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", int(MIN_PING_INTERVAL_S * 1000)),
        ("grpc.http2.max_ping_strikes", 0),
    ]
