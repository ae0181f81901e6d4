"""`tunggal` command: the local cluster and operator tools.

tunggal local      start gateway + nodes on 127.0.0.1 with a demo gallery and demo tenants
tunggal stats      per-shard counts and state (through the gateway)
tunggal load       load generator (ghz-like, open loop, several tenants)
tunggal hash-key   SHA-256 of an API key (stdin), for the tenants file
tunggal snapshot   ask a node to write a snapshot now
tunggal owner      which node owns a subject id
tunggal accuracy   1:N accuracy report (FNIR at FPIR, DET curve), HNSW vs exact
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from gateway.tenants import Tenant, load_tenants
from gateway.tenants import main as tenants_main
from shard.shardmap import ShardMap, parse_nodes
from tunggal.client import TunggalClient, bearer
from tunggal.internal_auth import METADATA_KEY, SECRET_ENV, internal_secret
from tunggal.node.v1 import node_pb2 as node_pb
from tunggal.node.v1 import node_pb2_grpc as node_grpc
from tunggal.settings import GatewaySettings
from tunggal.signals import wait_for
from tunggal_tools import accuracy, load
from tunggal_tools.demo import DEMO_KEYS, DEMO_ROLES, DemoClients, seed, show, with_pushback
from tunggal_tools.localcluster import LocalCluster


def describe_quotas(tenant: Tenant) -> str:
    """E.g. ``Identify 50/s (burst 100), 16 in flight, 200000/day``; ``unlimited``."""
    parts = []
    for method, spec in sorted(tenant.quotas.items()):
        limits = []
        if spec.rate is not None:
            limits.append(f"{spec.rate:g}/s (burst {spec.bucket_size})")
        if spec.concurrency is not None:
            limits.append(f"{spec.concurrency} in flight")
        if spec.daily is not None:
            limits.append(f"{spec.daily}/day")
        shadow = " [shadow]" if spec.shadow else ""
        parts.append(f"{method} {', '.join(limits) or 'unlimited'}{shadow}")
    return "; ".join(parts) or "unlimited"


def print_tenants(cluster: LocalCluster) -> None:
    """The tenants of the cluster's gateway, their demo keys and what each may call."""
    if cluster.tenants_file is None:
        print("\nTenants: none, the gateway runs with --no-auth (local experiments only)")
        return
    config = load_tenants(Path(cluster.tenants_file))
    print(f"\nTenants ({cluster.tenants_file}); send 'authorization: Bearer <key>':")
    print(f"  {'tenant':<10} {'key':<20} {'priority':<9} may call")
    for tenant in config.tenants.values():
        key = DEMO_KEYS.get(tenant.id, "(not a demo key)")
        methods = ", ".join(sorted(tenant.methods))
        print(f"  {tenant.id:<10} {key:<20} {tenant.priority.value:<9} {methods}")
        print(f"  {'':<10} {'':<20} {'':<9} quotas: {describe_quotas(tenant)}")
        if tenant.id in DEMO_ROLES:
            print(f"  {'':<10} {'':<20} {'':<9} the demo uses it for {DEMO_ROLES[tenant.id]}")


class StopSignal(KeyboardInterrupt):
    """Raised in the main thread by the first SIGTERM or SIGINT: stop whatever it is doing."""


class _StopOnSignal:
    """SIGTERM and SIGINT raise `StopSignal` wherever the main thread is: starting the
    processes, seeding (gRPC's blocking calls check for signals every 200 ms), serving.
    Once stopping, further signals are ignored so that they cannot cut the drain short."""

    def __init__(self) -> None:
        self.stopping = False
        # Installed explicitly: a script's background job inherits SIGINT ignored,
        # and Ctrl-C must work there too.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        raise StopSignal(signal.Signals(signum).name)


def cmd_local(args: argparse.Namespace) -> int:
    """Run the local cluster until SIGTERM or SIGINT (Ctrl-C), then stop every process."""
    metrics_port = args.port + 1000 if args.metrics_port is None else args.metrics_port
    cluster = LocalCluster(
        data_dir=Path(args.data_dir),
        base_port=args.port,
        nodes=args.nodes,
        dim=128,
        metrics_port=metrics_port,
    )
    print(f"Tunggal local cluster: data in {cluster.data_dir}, logs in {cluster.log_dir}")
    print(f"  starting {args.nodes} matcher nodes and the gateway ...")
    stopper = _StopOnSignal()
    try:
        cluster.start()
        with DemoClients.connect(cluster.address, timeout=30) as demo:
            added = seed(demo.registry, args.subjects, stats=demo.ops)
            if added == 0:
                total = sum(n.templates for n in with_pushback(demo.ops.stats))
                print(f"  reusing the stored gallery: {total:,} templates")
            show(demo.bank, demo.agency, args.subjects)
        print_serving(cluster, args.subjects)
        print("Press Ctrl-C to stop.", flush=True)
        wait_for(threading.Event())  # until a signal raises StopSignal
    except StopSignal:
        pass
    finally:
        stopper.stopping = True
        print("\nstopping (draining, snapshotting) ...", flush=True)
        cluster.stop()
    return 0


def print_serving(cluster: LocalCluster, subjects: int) -> None:
    """What the cluster serves where, its tenants, and commands to try."""
    print("\nServing:")
    print(f"  gateway  {cluster.address}  (tunggal.v1.Matcher, tunggal.ops.v1.Operations)")
    for spec in cluster.node_specs:
        print(f"  {spec.name:<8} {spec.address}  (tunggal.node.v1.MatcherNode)")
    if cluster.metrics_url:
        print(f"  metrics  {cluster.metrics_url}")
    print_tenants(cluster)
    key = DEMO_KEYS["ops"]
    print(f"\n  try: grpcurl -plaintext {cluster.address} list")
    print(
        f"       grpcurl -plaintext -H 'authorization: Bearer {key}' "
        f"{cluster.address} tunggal.ops.v1.Operations/Stats"
    )
    print(
        f"       tunggal load --address {cluster.address} --method Identify "
        f"--tenant agency --rps 20 --duration 10s --subjects {subjects}"
    )
    if cluster.internal_secret:
        print(
            "  node calls (tunggal snapshot) need this cluster's secret:\n"
            f"       export {SECRET_ENV}={cluster.internal_secret}"
        )


def _api_key(args: argparse.Namespace, default_tenant: str) -> str:
    """--key, else $TUNGGAL_API_KEY, else the demo key of `default_tenant`."""
    key: str | None = args.key or os.environ.get(load.KEY_ENV)
    return key or DEMO_KEYS[default_tenant]


def cmd_stats(args: argparse.Namespace) -> int:
    """Print every node's row of Stats and the answering gateway's counts."""
    with TunggalClient(args.address, metadata=bearer(_api_key(args, "ops"))) as client:
        stats = client.cluster_stats()
    print(f"{'node':<10} {'address':<22} {'serving':<8} {'subjects':>10} {'templates':>10} "
          f"{'seq':>10} {'snap':>10} {'rss MiB':>8} {'ef':>5} {'ef measured on':>15}")  # fmt: skip
    for n in stats.nodes:
        print(
            f"{n.name:<10} {n.address:<22} {n.serving!s:<8} {n.subjects:>10,} "
            f"{n.templates:>10,} {n.last_seq:>10} {n.snapshot_seq:>10} "
            f"{n.rss_bytes / 2**20:>8.0f} {n.ef_search:>5} {n.calibrated_templates:>15,}"
            + (f"  ERROR {n.error}" if n.error else "")
        )
    gateway = stats.gateway
    print(
        f"gateway {args.address}: {gateway.identify_calls:,} Identify calls, "
        f"{gateway.escalations:,} escalated to exact search"
    )
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Ask one node to write a snapshot."""
    secret = internal_secret()
    metadata: tuple[tuple[str, str | bytes], ...] = ((METADATA_KEY, secret),) if secret else ()
    with grpc.insecure_channel(args.node) as channel:
        try:
            reply = node_grpc.MatcherNodeStub(channel).Snapshot(
                node_pb.SnapshotRequest(), timeout=600, metadata=metadata
            )
        except grpc.RpcError as err:
            code: Any = err.code()
            print(f"error: {code.name}: {err.details()}", file=sys.stderr)
            if code == grpc.StatusCode.UNAUTHENTICATED:
                print(f"  set {SECRET_ENV} to the cluster's internal secret", file=sys.stderr)
            return 1
    print(f"snapshot at seq {reply.seq}: {reply.path or '(already current)'}")
    return 0


def cmd_owner(args: argparse.Namespace) -> int:
    """Print the node that owns each subject id."""
    shard_map = ShardMap(parse_nodes(args.nodes))
    for sid in args.subject_ids:
        node = shard_map.owner(sid)
        print(f"{sid}\t{node.name}\t{node.address}")
    return 0


def cmd_hash_key(_args: argparse.Namespace) -> int:
    """Print the SHA-256 hex of an API key read from stdin (prompt on a terminal)."""
    return tenants_main(["hash-key"])


def cmd_load(args: argparse.Namespace) -> int:
    """Run the load generator."""
    return load.main(args)


def cmd_accuracy(args: argparse.Namespace) -> int:
    """1:N accuracy report: HNSW vs exact search, FNIR at target FPIRs, DET curve."""
    return accuracy.main(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `tunggal`."""
    parser = argparse.ArgumentParser(
        prog="tunggal",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = GatewaySettings()
    local = sub.add_parser("local", help="run a local cluster with a demo gallery")
    local.add_argument("--data-dir", default="data/local")
    local.add_argument("--port", type=int, default=defaults.port, help="gateway port")
    local.add_argument("--nodes", type=int, default=2)
    local.add_argument("--subjects", type=int, default=100_000, help="demo gallery size")
    local.add_argument(
        "--metrics-port", type=int, help="gateway /metrics port (default: --port + 1000; 0: off)"
    )
    local.set_defaults(func=cmd_local)
    stats = sub.add_parser("stats", help="per-shard state through the gateway")
    stats.add_argument("--address", default=f"127.0.0.1:{defaults.port}")
    stats.add_argument(
        "--key", help=f"API key of a tenant allowed Stats (default ${load.KEY_ENV}, else demo ops)"
    )
    stats.set_defaults(func=cmd_stats)
    load_cmd = sub.add_parser(
        "load",
        help="load generator: open loop, several tenants, ghz-like summary",
        description=load.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    load.add_arguments(load_cmd)
    load_cmd.set_defaults(func=cmd_load)
    hash_key = sub.add_parser(
        "hash-key",
        help="SHA-256 hex of an API key read from stdin, for api_key_sha256 (docs/tenants.md)",
    )
    hash_key.set_defaults(func=cmd_hash_key)
    snap = sub.add_parser("snapshot", help=f"make a node write a snapshot now (${SECRET_ENV})")
    snap.add_argument("--node", required=True, help="node host:port")
    snap.set_defaults(func=cmd_snapshot)
    owner = sub.add_parser("owner", help="which node owns a subject")
    owner.add_argument("subject_ids", nargs="+")
    owner.add_argument("--nodes", default=defaults.nodes)
    owner.set_defaults(func=cmd_owner)
    acc = sub.add_parser(
        "accuracy",
        help="1:N accuracy report: rank-1, FNIR at FPIR 1e-2/1e-3/1e-4, DET curve PNG",
        description="1:N accuracy of an in-process gallery, HNSW at the calibrated ef vs "
        "exact search (rank-1, FNIR at target FPIRs, DET curve). See tunggal_tools/accuracy.py.",
    )
    accuracy.add_arguments(acc)
    acc.set_defaults(func=cmd_accuracy)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `tunggal` console script."""
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
