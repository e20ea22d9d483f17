"""Write the FG-Synth benchmark as a CUB_200_2011-style folder.

    python tools/make_synthetic.py --out data/fgsynth            # defaults
    python tools/make_synthetic.py --out /tmp/tiny --classes 3 --images-per-class 8
    python tools/make_synthetic.py --out data/fgsynth_320 --size 320   # for a 64-px scale 1
    python tools/make_synthetic.py --out data/fgsynth --distractor      # writes data/fgsynth/distractor/CUB_200_2011

The textures' periods follow the factor from the stored size to scale 1's view of the whole image
(``--scale1-size``: model.input_sizes[0] x data.resize / data.crop); a setting where the whole image
alone would show the class is refused (``--no-check`` writes it anyway).

A set already in the folder is never written over: the same setting is kept as it is, another one
is refused (use another --out, or remove the folder yourself). The generator waits while another
process (a training, another make_synthetic) writes FG-Synth in the same folder.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from raccnn.cli import run_main
from raccnn.errors import ConfigError, RaccnnError
from raccnn.data.synthetic import (DEFAULTS, DEFAULT_SCALE1_SIZE, STAMP, certificate, fgsynth_lock,
                                    fgsynth_root, generate_fgsynth, texture_scale_for)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Generate FG-Synth (CUB_200_2011 layout).")
    p.add_argument("--out", required=True, help="folder that will hold CUB_200_2011/")
    p.add_argument("--classes", type=int, default=DEFAULTS["classes"])
    p.add_argument("--images-per-class", type=int, default=DEFAULTS["images_per_class"])
    p.add_argument("--size", type=int, default=DEFAULTS["size"], help="stored image side in pixels")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--train-fraction", type=float, default=DEFAULTS["train_fraction"])
    p.add_argument("--scale1-size", type=float, default=DEFAULT_SCALE1_SIZE,
                   help="side of the whole image at scale 1, px (model.input_sizes[0] x data.resize / data.crop)")
    p.add_argument("--distractor", action="store_true",
                   help="add decoy heads to every image (data.synth.distractor); written under OUT/distractor")
    p.add_argument("--no-check", action="store_true", help="write a set that fails the certificate")
    args = p.parse_args(argv)
    if not args.scale1_size > 0:
        p.error(f"--scale1-size must be > 0, got {args.scale1_size:g}")
    log = logging.getLogger("raccnn")  # says when it waits for another writer of the folder
    console = logging.StreamHandler(sys.stdout)
    log.addHandler(console)
    log.setLevel(logging.INFO)
    try:
        return run_main(lambda: make(args))
    finally:  # a caller of main() in its own process keeps its logger as it was
        log.removeHandler(console)


def make(args) -> int:
    problem = certificate(args.size, args.scale1_size)["problem"]
    if problem and not args.no_check:
        raise ConfigError(f"{problem} (--no-check writes it anyway)")
    t0 = time.perf_counter()
    out = fgsynth_root(args.out, args.distractor)  # where a training with data.root=OUT reads it
    try:
        with fgsynth_lock(out):  # the lock trainings take to write FG-Synth there
            existed = (out / "CUB_200_2011" / STAMP).is_file()  # a finished set is never rewritten
            path = generate_fgsynth(out, classes=args.classes, images_per_class=args.images_per_class,
                                    size=args.size, seed=args.seed, train_fraction=args.train_fraction,
                                    texture_scale=texture_scale_for(args.size, args.scale1_size),
                                    distractor=args.distractor)
    except ValueError as exc:  # a setting the generator cannot honour (its own checks)
        if isinstance(exc, RaccnnError):
            raise
        raise ConfigError(str(exc)) from None
    n = args.classes * args.images_per_class
    if existed:
        print(f"{path} already holds this set ({n} images); nothing written")
        return 0
    print(f"wrote {n} images to {path} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
