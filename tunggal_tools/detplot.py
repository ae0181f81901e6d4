"""DET curve plot (FNIR against FPIR, log-log) of one or more search methods.

Drawn with matplotlib's object API on the Agg canvas: no pyplot, no display,
no global backend state. Rates of exactly 0 cannot sit on a log axis; they are
drawn on a labelled floor line (half of one search of the probe set; for FPIR
also left of every target marked), so "no errors seen" stays visible.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from matcher.accuracy import Accuracy

_STYLES: tuple[tuple[str, str, float], ...] = (  # colour, line style, width
    ("tab:blue", "-", 2.0),
    ("tab:orange", "--", 1.6),
    ("tab:green", ":", 1.6),
)
_MARKERS = ("o", "s", "^")


def plot_det(methods: Mapping[str, Accuracy], path: Path, title: str, subtitle: str = "") -> Path:
    """Write the DET curves of `methods` (label -> Accuracy) to `path` (PNG)."""
    if not methods:
        raise ValueError("nothing to plot")
    first = next(iter(methods.values()))
    targets = [p.target for p in first.points]
    x_floor = min([0.5 / first.nonmated, *(0.5 * t for t in targets)])
    y_floor = 0.5 / first.mated
    fig = Figure(figsize=(8.0, 6.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    for i, (label, acc) in enumerate(methods.items()):
        colour, linestyle, width = _STYLES[i % len(_STYLES)]
        x = np.maximum(acc.det.fpir, x_floor)
        y = np.maximum(acc.det.fnir, y_floor)
        ax.plot(
            x,
            y,
            label=f"{label} (rank-1 {acc.rank1:.4f})",
            color=colour,
            linestyle=linestyle,
            linewidth=width,
        )
        for point in acc.points:
            if point.enough:
                ax.plot(
                    max(point.fpir, x_floor),
                    max(point.fnir, y_floor),
                    marker=_MARKERS[i % len(_MARKERS)],
                    markersize=7,
                    markerfacecolor="none",
                    markeredgewidth=1.5,
                    color=colour,
                )
    for point in first.points:
        enough = point.enough
        ax.axvline(
            point.target,
            color="grey" if enough else "lightgrey",
            linestyle=":" if enough else (0, (1, 4)),
            linewidth=1.0,
            zorder=0,
        )
        note = f"FPIR {point.target:.0e}" + ("" if enough else "\n(too few\nnon-mated)")
        ax.annotate(
            note,
            xy=(point.target, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize=8,
            color="dimgrey" if enough else "darkgrey",
            bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none"},
        )
    ax.axhline(y_floor, color="lightgrey", linewidth=0.8, zorder=0)
    ax.axvline(x_floor, color="lightgrey", linewidth=0.8, zorder=0)
    ax.annotate(
        f"FPIR = 0 (no false positive in {first.nonmated:,} non-mated)",
        xy=(x_floor, 0.0),
        xycoords=("data", "axes fraction"),
        xytext=(-3, 3),
        textcoords="offset points",
        rotation=90,
        ha="right",
        va="bottom",
        fontsize=8,
        color="grey",
    )
    ax.annotate(
        f"FNIR = 0 (no miss in {first.mated:,} mated)",
        xy=(1.0, y_floor),
        xycoords=("axes fraction", "data"),
        xytext=(-3, 3),
        textcoords="offset points",
        ha="right",
        fontsize=8,
        color="grey",
    )
    ax.set_xlim(x_floor / 1.5, 1.0)
    ax.set_ylim(y_floor / 1.5, 1.0)
    ax.set_xlabel(f"FPIR: false positive identification rate ({first.nonmated:,} non-mated)")
    ax.set_ylabel(f"FNIR: false negative identification rate ({first.mated:,} mated)")
    ax.set_title("\n".join([title, *textwrap.wrap(subtitle, 95)]), fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
