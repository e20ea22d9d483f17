"""Save the crop panel of a checkpoint on fixed images of a split (what TensorBoard shows per phase).

    python tools/crop_panel.py --checkpoint work_dirs/fgsynth_default/best.pt [--split test] [--n 6] [--out FILE.png]

Rows: the scale-1 input with the scale-2 (red) and scale-3 (yellow) squares and the ground-truth
part (green) and object (blue) boxes, the scale-2 crop with the scale-3 square, the scale-3 crop.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torchvision.transforms.v2.functional import to_pil_image

from raccnn.cli import run_main
from raccnn.errors import ConfigError
from raccnn.data.build import build_dataset, prepare_data
from raccnn.device import DEVICES
from raccnn.engine.inference import build_trained_model, load_training_checkpoint
from raccnn.engine.visualize import fixed_images, model_panel
from raccnn.fileio import atomic_open
from raccnn.models.proposers import part_index


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--n", type=int, default=6, help="number of images (rows)")
    p.add_argument("--out", default=None, help="default: crop_panel_<split>.png next to the checkpoint")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    args = p.parse_args(argv)
    return run_main(lambda: panel(args))


def panel(args) -> int:
    if args.n < 1:
        raise ConfigError(f"--n {args.n}: the panel needs at least one image (row)")
    ckpt = load_training_checkpoint(args.checkpoint)
    cfg = ckpt["config"]
    dataset = build_dataset(cfg, args.split, prepare_data(cfg))
    model, _ = build_trained_model(ckpt, args.device, dataset.part_names)
    hit = part_index(dataset.part_names, cfg["data"]["hit_parts"])
    image = model_panel(model, fixed_images(dataset, args.n), hit)
    out = args.out or str(Path(args.checkpoint).with_name(f"crop_panel_{args.split}.png"))
    with atomic_open(out, "wb") as f:
        to_pil_image(image).save(f, format="PNG")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
