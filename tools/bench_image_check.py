"""Time the image check that runs when a dataset opens, on a CUB-sized stand-in.

    python tools/bench_image_check.py [--root data/cub_standin] [--workers N]

Generates the full-size CUB stand-in (11,788 JPEGs around 500 x 375; raccnn/data/standin.py) under
``--root`` when it is absent, then times, for each mode: the first check (cold: every file read) and
the second (answered from the cache). Prints one line per case.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from raccnn.data.standin import write_cub_standin
from raccnn.data.verify import CACHE_NAME, verify_images


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="data/cub_standin")
    p.add_argument("--workers", type=int, default=None, help="threads (default: 2 per core, at most 16)")
    args = p.parse_args(argv)
    d = Path(args.root) / "CUB_200_2011"
    if not (d / "images.txt").is_file():
        t0 = time.perf_counter()
        write_cub_standin(args.root)
        print(f"generated the stand-in in {time.perf_counter() - t0:.0f} s")
    paths = [d / "images" / line.split()[1] for line in (d / "images.txt").read_text().splitlines()]
    mb = sum(p.stat().st_size for p in paths) / 2**20
    print(f"{len(paths)} images, {mb:.0f} MiB")
    for mode in ("header", "full"):
        (d / CACHE_NAME).unlink(missing_ok=True)
        for run in ("cold", "cached"):
            t0 = time.perf_counter()
            _, bad = verify_images(paths, mode, d, workers=args.workers)
            dt = time.perf_counter() - t0
            print(f"{mode:6s} {run:6s} {dt:7.2f} s  {len(paths) / dt:8.0f} images/s  ({len(bad)} unreadable)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
