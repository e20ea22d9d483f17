"""Pictures of ablation tables: the forest plot of each row's paired difference from the baseline.

The numbers come from ``raccnn/stats.py`` by way of the rows ``experiments/ablation.py`` writes to
results.csv; this module only draws them. It uses matplotlib's object interface with the Agg canvas
(no pyplot, no display, no global backend switch), so it runs on a machine without a screen and
leaves a notebook's own backend alone.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .fileio import atomic_open
from .stats import LEVEL

SAME = "#4d4d4d"  # rows whose interval includes zero
DIFFERENT = "#c0392b"  # rows whose interval excludes zero (the markdown table's *)


def metric_label(key: str) -> str:
    """Display name of a results column: "acc_scale2" -> "scale 2", "acc_fused123" -> "fused 1+2+3",
    "acc_fused_all" -> "fused (all)", "part_hit_scale2" -> "part hit s2"."""
    if key == "acc_fused_all":
        return "fused (all)"
    if m := re.fullmatch(r"acc_scale(\d+)", key):
        return f"scale {m[1]}"
    if m := re.fullmatch(r"acc_fused(\d+)", key):
        return "fused " + "+".join(m[1])
    if m := re.fullmatch(r"part_hit_scale(\d+)", key):
        return f"part hit s{m[1]}"
    return key


def _number(value: Any) -> float:
    """A results cell as a float: numbers as they are, csv strings parsed, empty or None as NaN."""
    if value is None or value == "":
        return math.nan
    return float(value)


def forest_plot(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], path: str | os.PathLike,
                level: float = LEVEL) -> Figure:
    """Draw one panel per metric of ``metrics`` and one line per row of ``rows``, top to bottom in
    their order: a dot at the row's mean paired difference from the baseline, whiskers to its
    ``level`` t-interval, both in points (the rows hold fractions), and a vertical line at zero.
    Rows whose interval excludes zero are drawn in red. A row without a difference (no paired run)
    keeps its line, empty; one with a single pair has a dot without whiskers.

    ``rows`` are dicts with the keys results.csv has ("row", "{metric}_diff", "{metric}_diff_ci_lo",
    "{metric}_diff_ci_hi", optionally "baseline"), numbers or the strings ``csv.DictReader`` gives.
    Writes a PNG to ``path`` (so that it never holds a half-written picture) and returns the Figure.
    """
    if not metrics:
        raise ValueError("forest_plot needs at least one metric")
    names = [str(r["row"]) + (" (baseline)" if r.get("baseline") == r["row"] else "") for r in rows]
    longest = max((len(n) for n in names), default=0)
    fig = Figure(figsize=(1.0 + 0.065 * longest + 3.4 * len(metrics), 1.3 + 0.3 * max(len(rows), 1)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    ys = list(range(len(rows)))
    for ax, metric in zip(axes, metrics):
        mean = [100 * _number(r.get(f"{metric}_diff")) for r in rows]
        lo = [100 * _number(r.get(f"{metric}_diff_ci_lo")) for r in rows]
        hi = [100 * _number(r.get(f"{metric}_diff_ci_hi")) for r in rows]
        colour = [DIFFERENT if (a > 0 or b < 0) else SAME for a, b in zip(lo, hi)]
        dots = [i for i in ys if math.isfinite(mean[i])]
        bars = [i for i in dots if math.isfinite(lo[i]) and math.isfinite(hi[i])]
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.hlines([ys[i] for i in bars], [lo[i] for i in bars], [hi[i] for i in bars],
                  colors=[colour[i] for i in bars], linewidth=1.6)
        ax.scatter([mean[i] for i in dots], [ys[i] for i in dots], c=[colour[i] for i in dots], s=22, zorder=3)
        ax.set_title(f"Δ {metric_label(metric)}")
        ax.set_xlabel(f"points, {100 * level:.0f} % t-interval")
        ax.grid(axis="y", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
    axes[0].set_yticks(ys, names)
    axes[0].set_ylim(max(len(rows), 1) - 0.5, -0.5)  # the first row on top, as in the table
    fig.suptitle("Paired difference from the baseline, per row (red: the interval excludes zero)",
                 fontsize="medium")
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return fig
