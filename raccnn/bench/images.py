"""Time the image check that runs when a dataset opens, on a CUB-sized stand-in.

    python tools/benchmark.py images [--root data/cub_standin] [--workers N]

Generates the full-size CUB stand-in (11,788 JPEGs around 500 x 375; raccnn/data/standin.py) under
``--root`` when it is absent, then times, for each mode: the first check (cold: every file read) and
the second (answered from the cache). Prints one line per case.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data.standin import write_cub_standin
from ..data.verify import CACHE_NAME, verify_images
from .options import at_least
from .timing import run_once

NAME = "images"
HELP = "the image check of a dataset, cold and cached"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="data/cub_standin")
    p.add_argument("--workers", type=at_least(1), default=None, help="threads (default: 2 per core, at most 16)")


def run(args) -> None:
    d = Path(args.root) / "CUB_200_2011"
    if not (d / "images.txt").is_file():
        seconds = run_once(lambda: write_cub_standin(args.root))
        print(f"generated the stand-in in {seconds:.0f} s")
    paths = [d / "images" / line.split()[1] for line in (d / "images.txt").read_text().splitlines()]
    mb = sum(p.stat().st_size for p in paths) / 2**20
    print(f"{len(paths)} images, {mb:.0f} MiB")
    for mode in ("header", "full"):
        (d / CACHE_NAME).unlink(missing_ok=True)
        for state in ("cold", "cached"):
            checked = []
            seconds = run_once(lambda: checked.append(verify_images(paths, mode, d, workers=args.workers)))
            bad = checked[0][1]
            print(f"{mode:6s} {state:6s} {seconds:7.2f} s  {len(paths) / seconds:8.0f} images/s  "
                  f"({len(bad)} unreadable)", flush=True)
