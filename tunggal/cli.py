"""`tunggal` command: the local cluster and operator tools.

tunggal local      start gateway + nodes on 127.0.0.1 with a demo gallery
tunggal stats      per-shard counts and state (through the gateway)
tunggal snapshot   ask a node to write a snapshot now
tunggal owner      which node owns a subject id
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

import grpc

from shard.shardmap import ShardMap, parse_nodes
from tunggal.client import TunggalClient
from tunggal.demo import seed, show
from tunggal.localcluster import LocalCluster
from tunggal.settings import GatewaySettings
from tunggal.v1 import tunggal_pb2 as pb
from tunggal.v1 import tunggal_pb2_grpc as pb_grpc


def cmd_local(args: argparse.Namespace) -> int:
    """Run the local cluster until Ctrl-C."""
    cluster = LocalCluster(
        data_dir=Path(args.data_dir), base_port=args.port, nodes=args.nodes, dim=128
    )
    print(f"Tunggal local cluster: data in {cluster.data_dir}, logs in {cluster.log_dir}")
    print(f"  starting {args.nodes} matcher nodes and the gateway ...")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        cluster.start()
        with TunggalClient(cluster.address, timeout=30) as client:
            added = seed(client, args.subjects)
            if added == 0:
                total = sum(n.templates for n in client.stats())
                print(f"  reusing the stored gallery: {total:,} templates")
            show(client, args.subjects)
            print("\nServing:")
            print(f"  gateway  {cluster.address}  (tunggal.v1.Matcher, health, reflection)")
            for spec in cluster.node_specs:
                print(f"  {spec.name:<8} {spec.address}  (tunggal.v1.MatcherNode)")
            print(f"\n  try: grpcurl -plaintext {cluster.address} list")
            print(f"       grpcurl -plaintext {cluster.address} tunggal.v1.Matcher/Stats")
            print("Press Ctrl-C to stop.")
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping (draining, snapshotting) ...")
        cluster.stop()
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Print every node's row of Stats."""
    with TunggalClient(args.address) as client:
        rows = client.stats()
    print(f"{'node':<10} {'address':<22} {'serving':<8} {'subjects':>10} {'templates':>10} "
          f"{'seq':>10} {'snap':>10} {'rss MiB':>8}")  # fmt: skip
    for n in rows:
        print(
            f"{n.name:<10} {n.address:<22} {n.serving!s:<8} {n.subjects:>10,} "
            f"{n.templates:>10,} {n.last_seq:>10} {n.snapshot_seq:>10} "
            f"{n.rss_bytes / 2**20:>8.0f}" + (f"  ERROR {n.error}" if n.error else "")
        )
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Ask one node to write a snapshot."""
    with grpc.insecure_channel(args.node) as channel:
        reply = pb_grpc.MatcherNodeStub(channel).Snapshot(pb.SnapshotRequest(), timeout=600)
    print(f"snapshot at seq {reply.seq}: {reply.path or '(already current)'}")
    return 0


def cmd_owner(args: argparse.Namespace) -> int:
    """Print the node that owns each subject id."""
    shard_map = ShardMap(parse_nodes(args.nodes))
    for sid in args.subject_ids:
        node = shard_map.owner(sid)
        print(f"{sid}\t{node.name}\t{node.address}")
    return 0


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
    local.set_defaults(func=cmd_local)
    stats = sub.add_parser("stats", help="per-shard state through the gateway")
    stats.add_argument("--address", default=f"127.0.0.1:{defaults.port}")
    stats.set_defaults(func=cmd_stats)
    snap = sub.add_parser("snapshot", help="make a node write a snapshot now")
    snap.add_argument("--node", required=True, help="node host:port")
    snap.set_defaults(func=cmd_snapshot)
    owner = sub.add_parser("owner", help="which node owns a subject")
    owner.add_argument("subject_ids", nargs="+")
    owner.add_argument("--nodes", default=defaults.nodes)
    owner.set_defaults(func=cmd_owner)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `tunggal` console script."""
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
