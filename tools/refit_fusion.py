"""Run only the fusion phase again on a finished alternation, with the fusion head of your choice.

    python tools/refit_fusion.py --run work_dirs/fgsynth_default --fusion features|log_probs --work-dir OUT
                                 [--opts train.fusion.epochs=5 ...]

Reads ``best_alternate.pt`` of ``--run`` (the epoch fusion starts from) and writes into the new
``--work-dir``: that checkpoint with the chosen fusion heads in place of the old ones (scales and
APNs unchanged), the fusion phase's ``best.pt`` and ``last.pt``, ``train.log`` and the test
``metrics.json``. So two fusion heads can be compared on the very same scales, paired by run.
The run's own files are only read; an ``--work-dir`` that already holds a run is refused, and so are
``--opts`` that change the shape of the kept scales and APNs (``model.width``, ...) or a dataset whose
class names differ from the run's, before anything is written.
"""
from __future__ import annotations

import argparse
import sys

from raccnn.cli import run_main
from raccnn.engine.refit import refit
from raccnn.models.fusion import FUSIONS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="work dir of a finished run (its best_alternate.pt is read)")
    p.add_argument("--fusion", required=True, choices=list(FUSIONS))
    p.add_argument("--work-dir", required=True, help="a new directory for the refitted run")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys, e.g. train.fusion.lr")
    args = p.parse_args(argv)
    return run_main(lambda: refit(args.run, args.fusion, args.work_dir, args.opts) and 0)


if __name__ == "__main__":
    sys.exit(main())
