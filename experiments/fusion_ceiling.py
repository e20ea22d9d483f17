"""How far a fusion rule could lift a finished run's fused head above its best scale: the head's
lead, and the ceiling, the lead of the best weighting of the scales chosen on the scored split
itself (the target of docs/results.md, "Fewer images per class").

    python experiments/fusion_ceiling.py RUN [RUN ...] [--split test] [--step 0.02] [--device cpu]

Scores RUN/best.pt on the split of the dataset its config names (as tools/eval.py, writing
nothing) and searches every weighting sum_s w_s log softmax(logits_s) of the n scales
(``LogProbFusion``'s form) on a grid over the simplex, w_s in multiples of ``--step`` summing to 1
(a prediction is unchanged when every w_s is scaled, so the simplex holds every weighting up to the
grid). The single scales are its corners, so the ceiling is never below 0. Chosen on the images
it is scored on, it bounds, up to the grid's resolution, what weights fitted elsewhere reach on
that split; a grid whose step divides this one's can only raise it. A run whose ceiling is +0.0
cannot gain from another fitting rule for these weights; only scales that err on different images
can lift it. With 4 or more scales a coarser step keeps the grid small.

The last column says where a gain could come from: for each scale, the images the best scale gets
wrong and that scale gets right (0 under the best scale itself). A weighting gains an image mostly
from these; where every other scale errs on the best scale's errors too, the ceiling is near +0.0.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raccnn.cli import run_main  # noqa: E402
from raccnn.device import DEVICES  # noqa: E402
from raccnn.engine.inference import score_checkpoint  # noqa: E402


def simplex_grid(n: int, step: float) -> torch.Tensor:
    """Every w in [0, 1]^n with sum 1 and each w_s a multiple of ``step`` (1 / step an integer):
    [C(1/step + n - 1, n - 1), n], the corners (one scale alone) included."""
    parts = round(1 / step)
    if parts < 1 or abs(parts * step - 1) > 1e-9:
        raise ValueError(f"--step must divide 1 into whole parts (0.1, 0.05, ...), got {step}")
    rows = [[b - a - 1 for a, b in zip((-1,) + cut, cut + (parts + n - 1,))]
            for cut in itertools.combinations(range(parts + n - 1), n - 1)]  # stars and bars
    return torch.tensor(rows, dtype=torch.float64) / parts


def best_weighting(logits: list[torch.Tensor], labels: torch.Tensor, step: float = 0.02) -> tuple[int, torch.Tensor]:
    """(images right, weights) of the weighting sum_s w_s log softmax(logits_s) with the most images of
    ``labels`` right, over ``simplex_grid``; among equals the first in the grid's order."""
    log_probs = torch.stack([F.log_softmax(x.double(), dim=1) for x in logits])  # [n, N, K]
    grid = simplex_grid(len(logits), step)
    right = torch.stack([(torch.einsum("s,snk->nk", w, log_probs).argmax(1) == labels).sum() for w in grid])
    i = int(right.argmax())
    return int(right[i]), grid[i]


def rescues(logits: list[torch.Tensor], labels: torch.Tensor, best: int) -> list[int]:
    """For each scale s, the images of ``labels`` that scale ``best`` gets wrong and s gets right."""
    right = [x.argmax(1) == labels for x in logits]
    return [int((r & ~right[best]).sum()) for r in right]


def score_run(run: str, split: str, device: str | None) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(per-scale logits, the widest fused head's logits, labels) of RUN/best.pt on ``split``."""
    path = os.path.join(run, "best.pt")
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such file (a finished tools/train.py run writes it)")
    out, _, _ = score_checkpoint(path, split, device=device)
    if not out.fused:
        raise SystemExit(f"{path}: the model has no fused head (one scale)")
    return out.logits, out.fused[max(out.fused, key=len)], out.label


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--step", type=float, default=0.02,
                        help="the weights' grid step on the simplex (1326 weightings of 3 scales at 0.02)")
    parser.add_argument("--device", default=None, choices=DEVICES, help="default: the device of the run's config")
    args = parser.parse_args(argv)
    try:
        simplex_grid(2, args.step)
    except ValueError as e:
        parser.error(str(e))

    return run_main(lambda: report(args))


def report(args) -> int:
    leads, ceilings = [], []
    print(f"{'run':40s} {'images':>6s} {'best scale':>15s} {'head':>6s} {'lead':>6s} {'ceiling':>7s}  weights at the ceiling  "
          "rescues by scale")
    for run in args.runs:
        logits, fused, labels = score_run(run, args.split, args.device)
        n = len(labels)
        right = [int((x.argmax(1) == labels).sum()) for x in logits]
        best = max(range(len(right)), key=right.__getitem__)
        head = int((fused.argmax(1) == labels).sum())
        top, w = best_weighting(logits, labels, args.step)
        leads.append(100 * (head - right[best]) / n)
        ceilings.append(100 * (top - right[best]) / n)
        print(f"{run:40s} {n:6d} {'scale' + str(best + 1):>8s} {100 * right[best] / n:5.1f} % {100 * head / n:6.1f} "
              f"{leads[-1]:+6.1f} {ceilings[-1]:+7.1f}  {' '.join(f'{x:.2f}' for x in w.tolist())}  "
              f"{' '.join(map(str, rescues(logits, labels, best)))}")
    print(f"{len(leads)} runs: {sum(x < 0 for x in leads)} heads below their best scale, "
          f"{sum(x <= 0 for x in ceilings)} with a ceiling of +0.0; mean lead {sum(leads) / len(leads):+.1f}, "
          f"mean ceiling {sum(ceilings) / len(ceilings):+.1f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
