"""Write the FG-Synth benchmark as a CUB_200_2011-style folder.

    python tools/make_synthetic.py --out data/fgsynth            # defaults
    python tools/make_synthetic.py --out /tmp/tiny --classes 3 --images-per-class 8
"""
from __future__ import annotations

import argparse
import sys
import time

from raccnn.data import DatasetError
from raccnn.data.synthetic import DEFAULTS, generate_fgsynth
from raccnn.fileio import describe_os_error


def main() -> int:
    p = argparse.ArgumentParser(description="Generate FG-Synth (CUB_200_2011 layout).")
    p.add_argument("--out", required=True, help="folder that will hold CUB_200_2011/")
    p.add_argument("--classes", type=int, default=DEFAULTS["classes"])
    p.add_argument("--images-per-class", type=int, default=DEFAULTS["images_per_class"])
    p.add_argument("--size", type=int, default=DEFAULTS["size"], help="stored image side in pixels")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--train-fraction", type=float, default=DEFAULTS["train_fraction"])
    args = p.parse_args()
    t0 = time.perf_counter()
    try:
        path = generate_fgsynth(args.out, classes=args.classes, images_per_class=args.images_per_class,
                                size=args.size, seed=args.seed, train_fraction=args.train_fraction)
    except OSError as exc:
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except (ValueError, DatasetError) as exc:  # a setting the generator cannot honour, or a foreign folder
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = args.classes * args.images_per_class
    print(f"wrote {n} images to {path} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
