"""What splitting a gallery over shards costs, before and through the RPC path.

    python -m bench.sharding [--subjects 1000000] [--data-dir DIR] [--queries 2000] [--runs 3]

Uses the stored gallery of `bench.cpu_breakdown` (--data-dir; structured
FaceModel subjects 0..n-1 enrolled from capture 0 over 2 nodes, enrolled first
if it is not there), and holds in this one process:

- each node's newest snapshot index and its stored templates (the shard
  map's split of the gallery);
- one raw hnswlib index over the whole gallery (FaceModel rows 0..n-1, built
  with the nodes' M and ef_construction, or loaded from the bench cache).

Each index is calibrated the nodes' way (`bench.reference.calibrated_ef`: the
same probes, target and grid, numpy exact search as the oracle). Then the same
mated probes are searched from the same client threads, three ways taking
turns within each round:

- **raw**: one `knn_query` over the whole gallery at its calibrated ef;
- **ideal sharding**: one `knn_query` per shard at that shard's calibrated ef,
  both in the calling thread, then the per-subject merge: no RPC, no server;
- **gateway**: Identify through the local cluster (gateway + the 2 nodes as
  processes, started over the same data, calibrated by the nodes themselves),
  from `tunggal load`'s grpc.aio generator with as many calls in flight as
  the client threads; and again from those threads on the sync client.

ideal/raw is the most that any gateway over these shards can reach on this
machine at equal accuracy; gateway/ideal is what the RPC path keeps of it.
Appends its figures to the day's run file under docs/benchmarks/ unless --no-write.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np
import numpy.typing as npt

from bench.cpu_breakdown import DATA_DIR, KEY, cluster, seed
from bench.identify import (
    GATEWAY,
    SYNC_GATEWAY,
    aio_identify_load,
    interleaved_loads,
    settled_stats,
    threaded,
)
from bench.reference import add_cache_option, cache_path, calibrated_ef, raw_hnsw
from bench.report import command_line, log, machine, now, publish
from matcher.snapshot import read_manifest, snapshots
from matcher.store import Store
from tunggal.client import TunggalClient, bearer
from tunggal.settings import NodeSettings
from tunggal_tools.load import identify_requests
from tunggal_tools.synthetic import FaceModel, identity_of, subject_id

FloatMatrix = npt.NDArray[np.float32]
_K = 10


@dataclass
class Shard:
    """One node's index, its gallery rows by label and each label's identity number."""

    name: str
    index: hnswlib.Index
    rows: FloatMatrix
    identity: npt.NDArray[np.int64]
    ef: int = 0


def load_shard(data_dir: Path, dim: int) -> Shard:
    """The newest good snapshot of a node's data directory, with its stored templates."""
    for path in snapshots(data_dir / "snapshots"):
        manifest = read_manifest(path)
        if manifest is not None and manifest.dim == dim:
            break
    else:
        raise SystemExit(f"{data_dir}: no snapshot of dimension {dim}")
    store = Store(data_dir / "gallery.sqlite", dim)
    try:
        bound = store.label_bound()
        rows = np.zeros((bound, dim), dtype=np.float32)
        identity = np.full(bound, -1, dtype=np.int64)
        for labels, subjects, vectors in store.iter_templates():
            rows[labels] = vectors
            identity[labels] = [identity_of(s) for s in subjects]
    finally:
        store.close()
    index = hnswlib.Index(space="cosine", dim=dim)
    index.load_index(str(path / "index.bin"), max_elements=max(bound, manifest.capacity))
    if index.get_current_count() != int((identity >= 0).sum()):
        raise SystemExit(f"{data_dir}: the snapshot is behind the store; restart the node once")
    return Shard(data_dir.name, index, rows, identity)


def sharded_top(shards: list[Shard], probe: FloatMatrix) -> list[int]:
    """Top-_K identity numbers over all shards, one search per shard."""
    found: list[tuple[float, int]] = []
    for shard in shards:
        labels, distances = shard.index.knn_query(probe, k=_K * 3, num_threads=1)
        found += [
            (float(d), int(shard.identity[lb]))
            for lb, d in zip(labels[0], distances[0], strict=True)
        ]
    best: dict[int, float] = {}
    for distance, ident in sorted(found):
        best.setdefault(ident, distance)
    return sorted(best, key=lambda i: best[i])[:_K]


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (module docstring) with the arguments `argv`."""
    p = command_line(__doc__)
    p.add_argument("--subjects", type=int, default=1_000_000)
    p.add_argument("--data-dir", default=str(DATA_DIR), help="the stored gallery")
    p.add_argument("--port", type=int, default=48151)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    add_cache_option(p)
    args = p.parse_args(argv)
    model = FaceModel(dim=128, structure=0.7)
    seed(args, model)  # enrolls (and snapshots, at stop) unless the gallery is there
    shards = [load_shard(Path(args.data_dir) / f"node-{i}", model.dim) for i in range(2)]
    n = sum(int((s.identity >= 0).sum()) for s in shards)
    covered = np.sort(np.concatenate([s.identity[s.identity >= 0] for s in shards]))
    if not np.array_equal(covered, np.arange(n)):
        raise SystemExit("the shards do not hold FaceModel identities 0..n-1 once each")
    gallery = np.concatenate(
        [model.samples(range(lo, min(n, lo + 100_000)), 0) for lo in range(0, n, 100_000)]
    )
    raw, _, _ = raw_hnsw(gallery, model.structure, cache_path(args.cache), log=log)
    raw_cal = calibrated_ef(raw, gallery)
    del gallery
    raw.set_ef(raw_cal.ef)
    log(f"raw hnswlib over {n:,}: ef {raw_cal.ef} ({raw_cal.hit_rate:.4f})")
    for shard in shards:
        cal = calibrated_ef(shard.index, shard.rows)
        shard.ef = cal.ef
        shard.index.set_ef(cal.ef)
        log(f"{shard.name}: {len(shard.rows):,} templates, ef {cal.ef} ({cal.hit_rate:.4f})")

    rng = np.random.default_rng(11)
    ids = rng.choice(n, size=args.queries, replace=False)
    probes = model.samples(ids, 1)
    truth = [subject_id(int(i)) for i in ids]
    raw_labels, _ = raw.knn_query(probes, k=_K, num_threads=2)
    hits = {
        "raw": int((raw_labels[:, 0] == ids).sum()),
        "ideal": sum(sharded_top(shards, probes[i : i + 1])[0] == ids[i] for i in range(len(ids))),
    }

    with (
        cluster(args, {}) as cl,
        TunggalClient(cl.address, timeout=60, metadata=bearer(KEY)) as client,
    ):
        nodes = settled_stats(client)
        node_efs = ", ".join(f"{s.name}: {s.ef_search}" for s in nodes)

        def gateway_top(i: int) -> str:
            answer = client.identify(probes[i], k=_K)
            return answer.candidates[0].subject_id if answer.candidates else ""

        hits["gateway"] = sum(gateway_top(i) == truth[i] for i in range(len(ids)))
        n_ids = len(ids)
        requests = identify_requests(probes, _K)
        loads = interleaved_loads(
            args,
            {
                "raw": threaded(lambda i: raw.knn_query(probes[i], k=_K, num_threads=1), n_ids),
                "ideal": threaded(lambda i: sharded_top(shards, probes[i : i + 1]), n_ids),
                GATEWAY: lambda c: aio_identify_load(cl.address, KEY, requests, c),
                SYNC_GATEWAY: threaded(gateway_top, n_ids),
            },
        )

    d = NodeSettings()
    efs = ", ".join(f"{s.name}: {s.ef}" for s in shards)
    lines = [
        f"## Ideal sharding against one index and the gateway — {now()}",
        "",
        (
            f"Machine: {machine()}. `python -m bench.sharding` — {n:,} structured FaceModel "
            f"subjects (structure {model.structure}, dim {model.dim}), M={d.hnsw_m}, "
            f"ef_construction={d.ef_construction}. Raw: one hnswlib index over the whole "
            "gallery. Ideal sharding: the 2 nodes' own indexes (their snapshots), searched one "
            "after the other in the calling thread and merged, in this process. Gateway: "
            "Identify through the local cluster over the same data, from `tunggal load`'s "
            "grpc.aio generator (the same number of calls in flight as raw's client threads), "
            "and from the sync `TunggalClient` in those threads. "
            f"{len(ids)} mated probes, medians of {args.runs} "
            "rounds in which the four take turns (ratios taken within a round)."
        ),
        "",
        "| measure | value |",
        "|---|---|",
        (
            f"| calibrated ef: raw (whole gallery) / shards in this process / the nodes' own | "
            f"{raw_cal.ef} / {efs} / {node_efs} |"
        ),
        "| rank-1 mate hits: raw / ideal sharding / gateway (sync client) | "
        + " / ".join(f"{hits[k]}/{len(ids)}" for k in ("raw", "ideal", "gateway"))
        + " |",
    ]
    for c in args.concurrency:
        qps = {k: statistics.median(x.qps for x in v[c]) for k, v in loads.items()}
        lines.append(
            f"| c={c}: QPS raw / ideal sharding / gateway / {SYNC_GATEWAY} | {qps['raw']:,.0f} / "
            f"{qps['ideal']:,.0f} / {qps[GATEWAY]:,.0f} / {qps[SYNC_GATEWAY]:,.0f} |"
        )
        pairs = (("ideal", "raw"), (GATEWAY, "raw"), (GATEWAY, "ideal"), (SYNC_GATEWAY, "raw"))
        for top, bottom in pairs:
            ratios = [a.qps / b.qps for a, b in zip(loads[top][c], loads[bottom][c], strict=True)]
            rounds = ", ".join(f"{x:.2f}" for x in ratios)
            lines.append(
                f"| c={c}: {top}/{bottom} QPS | **{statistics.median(ratios):.2f}** "
                f"(rounds: {rounds}) |"
            )
    text = "\n".join([*lines, ""])
    publish(text, write=not args.no_write)


if __name__ == "__main__":
    main()
