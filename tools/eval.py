"""Evaluate a checkpoint: prints a table and writes metrics.json next to the checkpoint.

    python tools/eval.py --checkpoint work_dirs/fgsynth_default/best.pt [--split test|val] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys

from raccnn.config import ConfigError
from raccnn.data import DatasetError
from raccnn.engine.checkpoint import CheckpointError
from raccnn.device import DEVICES
from raccnn.engine.inference import run_evaluation
from raccnn.fileio import describe_os_error


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--device", default=None, choices=DEVICES)
    args = p.parse_args(argv)
    try:
        metrics, table = run_evaluation(args.checkpoint, args.split, device=args.device)
    except (CheckpointError, ConfigError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # metrics.json cannot be written beside the checkpoint
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
