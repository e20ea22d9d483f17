"""The forest plot of ablation rows: what it draws is the numbers it was given."""
import csv
import math

import numpy as np
from matplotlib.collections import LineCollection, PathCollection
from PIL import Image

from raccnn.plots import forest_plot, metric_label

NAN = math.nan


def hand_rows():
    """A baseline, a row whose scale-2 interval excludes zero, one with a single pair (no interval),
    one with no paired run, and one whose intervals include zero."""
    rows = [
        {"row": "base", "acc_scale2_diff": 0.0, "acc_scale2_diff_ci_lo": 0.0, "acc_scale2_diff_ci_hi": 0.0,
         "acc_fused_all_diff": 0.0, "acc_fused_all_diff_ci_lo": 0.0, "acc_fused_all_diff_ci_hi": 0.0},
        {"row": "better", "acc_scale2_diff": 0.05, "acc_scale2_diff_ci_lo": 0.01, "acc_scale2_diff_ci_hi": 0.09,
         "acc_fused_all_diff": 0.02, "acc_fused_all_diff_ci_lo": -0.01, "acc_fused_all_diff_ci_hi": 0.05},
        {"row": "one seed", "acc_scale2_diff": -0.03, "acc_scale2_diff_ci_lo": NAN, "acc_scale2_diff_ci_hi": NAN,
         "acc_fused_all_diff": -0.01, "acc_fused_all_diff_ci_lo": NAN, "acc_fused_all_diff_ci_hi": NAN},
        {"row": "unfinished"},
        {"row": "worse?", "acc_scale2_diff": -0.1, "acc_scale2_diff_ci_lo": -0.25, "acc_scale2_diff_ci_hi": 0.05,
         "acc_fused_all_diff": -0.04, "acc_fused_all_diff_ci_lo": -0.12, "acc_fused_all_diff_ci_hi": 0.04},
    ]
    for r in rows:
        r["baseline"] = "base"
    return rows


def drawn(ax):
    """(dots [(x, y)], whiskers [(x_lo, x_hi, y)], their colours) of one panel."""
    (dots,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    (bars,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    whiskers = [(s[0][0], s[1][0], s[0][1]) for s in bars.get_segments()]
    return [tuple(p) for p in dots.get_offsets()], whiskers, dots.get_facecolors(), bars.get_colors()


def test_forest_plot_draws_each_rows_difference_and_interval(tmp_path):
    path = tmp_path / "forest.png"
    fig = forest_plot(hand_rows(), ["acc_scale2", "acc_fused_all"], path)
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert 400 < width < 3000 and 200 < height < 3000
    assert path.stat().st_size > 5000

    scale2, fused = fig.axes
    assert [scale2.get_title(), fused.get_title()] == ["Δ scale 2", "Δ fused (all)"]
    # rows top to bottom in the given order, the baseline named as such
    assert [t.get_text() for t in scale2.get_yticklabels()] == ["base (baseline)", "better", "one seed", "unfinished",
                                                               "worse?"]
    assert scale2.get_ylim()[0] > scale2.get_ylim()[1]  # y grows downwards: row 0 on top

    dots, whiskers, dot_colours, bar_colours = drawn(scale2)
    # in points; no dot for the unfinished row (y = 3), no whiskers without an interval (y = 2)
    np.testing.assert_allclose(dots, [(0, 0), (5, 1), (-3, 2), (-10, 4)])
    np.testing.assert_allclose(whiskers, [(0, 0, 0), (1, 9, 1), (-25, 5, 4)])
    red = [tuple(c) for c in dot_colours]
    assert red[1] != red[0] and red[0] == red[2] == red[3]  # only "better" excludes zero
    assert tuple(bar_colours[1]) == red[1] and tuple(bar_colours[2]) == red[0]

    dots, whiskers, dot_colours, _ = drawn(fused)
    np.testing.assert_allclose(dots, [(0, 0), (2, 1), (-1, 2), (-4, 4)])
    np.testing.assert_allclose(whiskers, [(0, 0, 0), (-1, 5, 1), (-12, 4, 4)])
    assert len({tuple(c) for c in dot_colours}) == 1  # every fused interval includes zero
    for ax in (scale2, fused):  # the line at zero
        assert any(np.allclose(line.get_xdata(), 0) for line in ax.lines)


def test_forest_plot_reads_results_csv_rows(tmp_path):
    """results.csv rows (strings, empty cells) draw as the numbers they hold."""
    rows = hand_rows()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(tmp_path / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with open(tmp_path / "results.csv", newline="") as f:
        read = list(csv.DictReader(f))
    assert read[3]["acc_scale2_diff"] == ""
    fig = forest_plot(read, ["acc_scale2"], tmp_path / "forest.png")
    (ax,) = fig.axes
    dots, whiskers, _, _ = drawn(ax)
    np.testing.assert_allclose(dots, [(0, 0), (5, 1), (-3, 2), (-10, 4)])
    np.testing.assert_allclose(whiskers, [(0, 0, 0), (1, 9, 1), (-25, 5, 4)])


def test_metric_labels():
    assert [metric_label(k) for k in ("acc_scale1", "acc_fused123", "acc_fused_all", "part_hit_scale2")] == [
        "scale 1", "fused 1+2+3", "fused (all)", "part hit s2"]
