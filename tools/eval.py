"""Evaluate a checkpoint: prints a table (top-1, top-5 and mean per-class accuracy per head) and
writes its metrics file and its per-image predictions (a CSV) next to the checkpoint.

    python tools/eval.py --checkpoint work_dirs/fgsynth_default/best.pt [--split test|val] [--device cpu]
                         [--data-root DIR] [--out-dir DIR] [--opts data.num_workers=0 ...]

The file is named after the checkpoint and split: ``metrics.json`` for ``best.pt`` on the test split
(what tools/train.py writes), ``metrics_val.json`` on the validation split, ``metrics_<stem>.json`` and
``metrics_<stem>_val.json`` for another checkpoint (``best_alternate.pt`` -> ``metrics_best_alternate.json``),
so one checkpoint's numbers never replace another's. The predictions file is named after it
(``predictions.csv``, ``predictions_val.csv``, ``predictions_best_alternate.csv``, ...): per image its
file, its label, each head's prediction with its probability and that of the label, and the squares
of scales 2, 3, ... (columns: raccnn/engine/predictions.py). The dataset is the one the checkpoint's config
names, or ``--data-root`` (the same dataset moved); its class names must be the checkpoint's, in the
same order, else nothing is computed or written.

Next to the checkpoint the files are those training wrote, so there ``--opts`` may only change where
and how the images are loaded (``SAME_MEASUREMENT_KEYS``). To measure the model on other images (for
FG-Synth another draw, ``--opts data.synth.seed=101 data.synth.images_per_class=1200`` with its own
``--data-root``), give ``--out-dir DIR``: the files go there, named as above.
"""
from __future__ import annotations

import argparse
import sys

from raccnn.cli import run_main
from raccnn.device import DEVICES
from raccnn.engine.inference import run_evaluation
from raccnn.fileio import check_writable_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--device", default=None, choices=DEVICES)
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="the dataset's folder, if it moved since training (default: data.root of the checkpoint)")
    p.add_argument("--out-dir", default=None, metavar="DIR",
                   help="write the metrics and predictions files here (created) instead of next to the checkpoint; "
                        "needed when --opts changes what is measured (other images, another split rule, ...)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override keys of the checkpoint's config, e.g. data.num_workers=0 (not those that "
                        "shape the weights)")
    args = p.parse_args(argv)
    return run_main(lambda: evaluate(args))


def evaluate(args) -> int:
    if args.out_dir is not None:
        check_writable_dir(args.out_dir, "--out-dir folder")
    _, table = run_evaluation(args.checkpoint, args.split, device=args.device, opts=args.opts,
                              data_root=args.data_root, out_dir=args.out_dir)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
