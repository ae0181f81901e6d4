"""`tunggal accuracy`: 1:N accuracy of one gallery, HNSW against exact search.

    tunggal accuracy                                  # 100k synthetic subjects
    tunggal accuracy --subjects 1000000 --json acc.json
    tunggal accuracy --gallery-npy g.npy --probes-npy p.npy --probe-truth-npy t.npy

Builds an in-process Gallery (the matcher node's shard, in a temporary
directory), enrolls one template per subject, lets it calibrate its HNSW ef
against exact search, then runs every probe twice: through Gallery.search at
the calibrated ef (as a node serves Identify, including the escalation to
exact search in the ambiguity band) and through exact search. From the top-1
result of each search it reports the rank-1 hit rate and FNIR at FPIR 1e-2,
1e-3 and 1e-4 (see matcher.accuracy), prints a table and draws both DET
curves (tunggal_tools.detplot). The work itself is in tunggal_tools.accuracy_run, imported
only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matcher.accuracy import Accuracy, OperatingPoint
from matcher.calibration import Calibration
from tunggal.logs import configure_logging


@dataclass(frozen=True)
class Report:
    """Everything `tunggal accuracy` prints, plots and writes."""

    source: str
    subjects: int
    dim: int
    calibration: Calibration
    escalate_band: float
    escalations: int
    methods: dict[str, Accuracy]
    agreement_mated: float
    agreement_nonmated: float
    seconds: dict[str, float]


_CELL = 23


def _cell(point: OperatingPoint) -> str:
    if not point.enough:
        return f"too few (need {point.needed:,})"
    return f"{point.fnir:.5f} (T {point.threshold:.4f})".ljust(_CELL)


def format_table(report: Report) -> str:
    """The human-readable report."""
    cal = report.calibration
    first = next(iter(report.methods.values()))
    rows = [
        [label, f"{acc.rank1:.5f}", *(_cell(p) for p in acc.points)]
        for label, acc in report.methods.items()
    ]
    head = ["search", "rank-1", *(f"FPIR {p.target:.0e}" for p in first.points)]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(2)]
    lead = " " * (widths[0] + widths[1] + 4)

    def line(cells: list[str]) -> str:
        left = f"{cells[0]:<{widths[0]}}  {cells[1]:>{widths[1]}}  "
        return (left + "  ".join(f"{c:<{_CELL}}" for c in cells[2:])).rstrip()

    lines = [
        f"Tunggal 1:N accuracy: {report.subjects:,} enrolled subjects, dim {report.dim}",
        f"  data: {report.source}",
        f"  probes: {first.mated:,} mated, {first.nonmated:,} non-mated",
        (
            f"  calibrated ef={cal.ef}: HNSW rank-1 mate hits {cal.hnsw_hits}/{cal.exact_hits} "
            f"of exact's = {cal.hit_rate:.4f} on {cal.probes} probes "
            f"(target {cal.target}: {'met' if cal.met else 'NOT met'})"
        ),
        f"  HNSW = Gallery.search at ef={cal.ef}, as a node serves Identify (escalated to exact",
        (
            f"  search when the best score is within {report.escalate_band} below the verify "
            f"threshold: {report.escalations} escalations)"
        ),
        "",
        lead + "FNIR at the threshold T where FPIR =",
        line(head),
    ]
    lines.append("-" * max(len(x) for x in lines[-1:]))
    lines += [line(r) for r in rows]
    lines.append("")
    short = [p for p in first.points if not p.enough]
    if short:
        lines.append(
            f"too few: FPIR p needs >= 10/p non-mated searches, here {first.nonmated:,} "
            f"(--nonmated {max(p.needed for p in short):,} covers every target)"
        )
    lines.append(
        f"HNSW's top-1 subject is exact's for {report.agreement_mated:.5f} of mated and "
        f"{report.agreement_nonmated:.5f} of non-mated probes"
    )
    return "\n".join(lines)


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None


def to_json(report: Report) -> dict[str, Any]:
    """The report as plain JSON values."""
    cal = report.calibration
    return {
        "source": report.source,
        "subjects": report.subjects,
        "dim": report.dim,
        "calibration": {
            "ef": cal.ef,
            "hit_rate": cal.hit_rate,
            "target": cal.target,
            "met": cal.met,
            "probes": cal.probes,
            "exact_hits": cal.exact_hits,
            "hnsw_hits": cal.hnsw_hits,
            "table": {str(k): v for k, v in cal.table.items()},
        },
        "escalate_band": report.escalate_band,
        "escalations": report.escalations,
        "top1_same_as_exact": {
            "mated": report.agreement_mated,
            "nonmated": report.agreement_nonmated,
        },
        "seconds": {k: round(v, 3) for k, v in report.seconds.items()},
        "methods": {
            label: {
                "mated": acc.mated,
                "nonmated": acc.nonmated,
                "rank1": acc.rank1,
                "operating_points": [
                    {
                        "target_fpir": p.target,
                        "threshold": _finite(p.threshold),
                        "fpir": p.fpir,
                        "fnir": p.fnir,
                        "enough_nonmated": p.enough,
                        "nonmated_needed": p.needed,
                    }
                    for p in acc.points
                ],
            }
            for label, acc in report.methods.items()
        },
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `tunggal accuracy`."""
    syn = parser.add_argument_group("synthetic data (the default)")
    syn.add_argument("--subjects", type=int, default=100_000, help="enrolled subjects")
    syn.add_argument("--dim", type=int, default=128, help="template dimension")
    syn.add_argument("--structure", type=float, default=0.7, help="FaceModel structure 0..1")
    syn.add_argument("--genuine", type=float, default=0.68, help="mean genuine cosine")
    syn.add_argument("--mated", type=int, default=2000, help="mated probes")
    syn.add_argument("--nonmated", type=int, default=10_000, help="non-mated probes")
    syn.add_argument("--seed", type=int, default=7, help="data and calibration seed")
    npy = parser.add_argument_group("data from .npy files (all three together)")
    npy.add_argument("--gallery-npy", type=Path, help="(n, d) float32; row i is subject i")
    npy.add_argument("--probes-npy", type=Path, help="(m, d) float32 probes")
    npy.add_argument("--probe-truth-npy", type=Path, help="(m,) int subject of each probe, -1 none")
    parser.add_argument(
        "--escalate-band",
        type=float,
        help="node escalate_band for the HNSW run (default: the node setting; 0: pure HNSW)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("docs/accuracy-det.png"), help="DET curve PNG"
    )
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument(
        "--log-level", default="warning", help="gallery log lines (JSON, stderr) from this level"
    )


def main(args: argparse.Namespace) -> int:
    """Run `tunggal accuracy` with parsed `args`."""
    files = [args.gallery_npy, args.probes_npy, args.probe_truth_npy]
    if any(files) and not all(files):
        print("--gallery-npy, --probes-npy and --probe-truth-npy go together", file=sys.stderr)
        return 2
    from tunggal_tools import accuracy_run  # the gallery, hnswlib, onnxruntime: only when run
    from tunggal_tools.detplot import plot_det  # matplotlib: only when run

    if all(files):
        data = accuracy_run.from_npy(args.gallery_npy, args.probes_npy, args.probe_truth_npy)
    else:
        data = accuracy_run.synthetic(
            subjects=args.subjects,
            dim=args.dim,
            structure=args.structure,
            mated=args.mated,
            nonmated=args.nonmated,
            seed=args.seed,
            genuine=args.genuine,
        )
    if not data.mated.any() or data.mated.all():
        print("need both mated and non-mated probes", file=sys.stderr)
        return 2
    configure_logging(args.log_level, "accuracy")
    report = accuracy_run.run(data, seed=args.seed, escalate_band=args.escalate_band)
    print(format_table(report))
    path = plot_det(
        report.methods,
        args.out,
        f"Tunggal 1:N DET: {report.subjects:,} subjects, HNSW vs exact search",
        report.source,
    )
    print(f"DET curve: {path}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(report), indent=2) + "\n")
        print(f"JSON: {args.json}")
    return 0
