"""How much a test split can say about "the fused head is at least as good as the best scale", per
finished run and over a set of runs (the target of docs/results.md, "Fewer images per class").

    python experiments/fused_lead.py RUN [RUN ...] [--head fused123] [--draws 20000]

Reads RUN/predictions.csv (written by ``tools/train.py --eval-split`` or ``tools/eval.py``, one row
per image of the split it scored). Per run: the images, the head's accuracy, the best single scale,
the head's lead over it in points, the exact McNemar p-value of head against that scale
(``stats.mcnemar_exact``), and, over test sets redrawn with replacement from the same images
(``stats.resampled_leads``, the best scale taken on each), the standard deviation of the lead and
the share of them on which the head is below. Over the runs: how many are below their best scale,
the mean lead with its 95 % t-interval (``stats.t_interval``), and the mean of the runs' redrawn
standard deviations, the part of a lead that one test split of this size cannot tell from noise.

``--per-class K`` is for a run scored on a large test set (``tools/eval.py --out-dir`` on another
draw of FG-Synth), cut into the test splits a smaller set would have: per run, the share of splits
of K images per class (drawn without replacement, ``stats.split_leads``) on which the head is below
its best scale; over the runs, the chance that every run is at or above it on one split each.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raccnn.stats import mcnemar_exact, resampled_leads, split_leads, t_interval  # noqa: E402


def read_right(run: str, head: str) -> tuple[list[bool], dict[str, list[bool]], list[str]]:
    """Which images ``head`` and each single scale get right, and each image's label, from
    RUN/predictions.csv."""
    path = os.path.join(run, "predictions.csv")
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such file (a run writes it when tools/train.py has --eval-split, "
                         f"or run tools/eval.py on it)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = rows[0].keys() if rows else []
    scales = sorted((c[: -len("_pred")] for c in columns if c.startswith("scale") and c.endswith("_pred")),
                    key=lambda h: int(h[len("scale"):]))
    if f"{head}_pred" not in columns or not scales:
        raise SystemExit(f"{path}: needs the columns {head}_pred and scale<i>_pred "
                         f"(it has {', '.join(c for c in columns if c.endswith('_pred')) or 'none'})")
    right = {h: [r[f"{h}_pred"] == r["label"] for r in rows] for h in [head] + scales}
    return right.pop(head), right, [r["label"] for r in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN")
    parser.add_argument("--head", default="fused123", help="the head against the single scales")
    parser.add_argument("--draws", type=int, default=20000, help="redrawn test sets per run")
    parser.add_argument("--per-class", type=int, default=0, metavar="K",
                        help="also the share of test splits of K images per class, drawn from the run's images, "
                             "on which the head is below its best scale")
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error(f"--draws must be at least 1, got {args.draws}")
    if args.per_class < 0:
        parser.error(f"--per-class must be at least 1 (0: off), got {args.per_class}")

    leads, spreads, below_on_split = [], [], []
    split_column = f" {f'P(below), {args.per_class}/class':>20s}" if args.per_class else ""
    print(f"{'run':40s} {'images':>6s} {'head %':>7s} {'best scale':>16s} {'lead':>6s} {'McNemar p':>9s} "
          f"{'redrawn sd':>10s} {'P(below)':>8s}{split_column}")
    for run in args.runs:
        head, scales, labels = read_right(run, args.head)
        n = len(head)
        best = max(scales, key=lambda h: sum(scales[h]))
        lead = 100 * (sum(head) - sum(scales[best])) / n
        only_head = sum(a and not b for a, b in zip(head, scales[best]))
        only_scale = sum(b and not a for a, b in zip(head, scales[best]))
        redrawn = 100 * resampled_leads(head, list(scales.values()), draws=args.draws)
        leads.append(lead)
        spreads.append(float(redrawn.std()))
        split = ""
        if args.per_class:
            try:
                on_splits = split_leads(head, list(scales.values()), labels, args.per_class, draws=args.draws)
            except ValueError as exc:
                raise SystemExit(f"{run}: --per-class {args.per_class}: {exc}") from None
            below_on_split.append(float((on_splits < 0).mean()))
            split = f" {below_on_split[-1]:20.3f}"
        print(f"{run:40s} {n:6d} {100 * sum(head) / n:7.1f} {best:>8s} {100 * sum(scales[best]) / n:6.1f} % "
              f"{lead:+6.1f} {mcnemar_exact(only_head, only_scale):9.2f} {spreads[-1]:10.1f} "
              f"{float((redrawn < 0).mean()):8.2f}{split}")
    ci = t_interval(leads)
    interval = f" [{ci.lo:+.1f}, {ci.hi:+.1f}]" if ci.n > 1 else ""
    print(f"{len(leads)} runs: {sum(x < 0 for x in leads)} below their best scale; mean lead {ci.mean:+.1f}{interval} "
          f"points; a redrawn test set moves a lead by {sum(spreads) / len(spreads):.1f} points (sd, mean over the runs)")
    if args.per_class:
        print(f"on test splits of {args.per_class} images per class, one per run: every run at or above its best "
              f"scale with probability {math.prod(1 - p for p in below_on_split):.3f}; "
              f"expected runs below {sum(below_on_split):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
