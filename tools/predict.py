"""Classify images with a trained RA-CNN and save what each scale looked at.

    python tools/predict.py --checkpoint work_dirs/fgsynth_default/best.pt IMAGE [IMAGE ...] [--out DIR] [--device cpu]

For each image: the top-5 classes of every scale and every fusion head, with probabilities, and
``<out>/<image stem>_crops.png``: the input with the scale-2 (red) and scale-3 (yellow) squares, then
the zoomed crops. A photo is turned upright as its EXIF orientation says (as a phone shows it). An image that cannot be read is reported on stderr and skipped; the exit code is
then 1 (2 if the checkpoint itself cannot be used or the output folder cannot be written). Images
that share a stem (``a.png a.jpg``) are told apart by their extension (``a_png_crops.png``,
``a_jpg_crops.png``), and the same name in several folders by a number, so no panel overwrites another.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2.functional import to_pil_image

from raccnn.cli import report, run_main
from raccnn.data import DatasetError
from raccnn.data.device_input import to_model_input
from raccnn.data.images import load_rgb, pil_to_uint8
from raccnn.data.transforms import build_transforms
from raccnn.engine.checkpoint import CheckpointError
from raccnn.device import DEVICES, resolve_device
from raccnn.engine.evaluate import head_label
from raccnn.engine.inference import load_trained_model
from raccnn.engine.visualize import crop_panel
from raccnn.fileio import atomic_open, check_writable_dir

TOP_K = 5


def load_model(path: str, device: torch.device):
    """(model in eval mode, class names, test transform) of a training checkpoint."""
    model, ckpt = load_trained_model(path, device)
    if model.proposer == "oracle":  # it reads the annotated part's box, which a new image does not have
        raise CheckpointError(f"{path}: its proposer is the oracle, which zooms on an annotated part box; "
                              "a new image has none (tools/eval.py scores it on its dataset)")
    cfg = ckpt["config"]
    classes = list(ckpt.get("classes") or [f"class {k}" for k in range(ckpt["num_classes"])])
    if len(classes) != ckpt["num_classes"] or len(set(classes)) != len(classes):
        raise CheckpointError(f"{path}: its class names {classes} are not {ckpt['num_classes']} distinct names, one per "
                              "output of the model, so its predictions cannot be named")
    transform = build_transforms(False, cfg["data"]["resize"], cfg["data"]["crop"])  # the training's test geometry
    return model, classes, transform


def read_image(path: str, transform) -> torch.Tensor:
    """The uint8 image [1, 3, H, W] the model's input is made of (``to_model_input``) for the image file
    ``path``; DatasetError if it cannot be read."""
    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: not a file")
    image = tv_tensors.Image(pil_to_uint8(load_rgb(path)))
    return transform(image).as_subclass(torch.Tensor)[None]


def top_k_line(logits: torch.Tensor, classes: list[str]) -> str:
    probs = logits.float().softmax(dim=-1)
    values, indices = probs.topk(min(TOP_K, len(classes)))
    return ", ".join(f"{classes[i]} {p:.3f}" for p, i in zip(values.tolist(), indices.tolist()))


def panel_names(paths: list[str]) -> list[str]:
    """One distinct ``*_crops.png`` file name per input path (see the module docstring)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    names = [os.path.basename(p).replace(".", "_") if stems.count(stem) > 1 else stem
             for p, stem in zip(paths, stems)]
    out, used = [], set()
    for name in names:
        unique, k = name, 1
        while unique in used:
            k += 1
            unique = f"{name}_{k}"
        used.add(unique)
        out.append(f"{unique}_crops.png")
    return out


@torch.no_grad()
def predict(model, classes, transform, path: str, png: str, device) -> str:
    """Print the predictions for one image and write its crop panel; returns the PNG's path."""
    images = to_model_input(read_image(path, transform), device, model.input_normalization)  # the training's
    out = model(images, return_crops=True)
    print(path)
    for s, logits in enumerate(out.logits, start=1):
        print(f"  {'scale ' + str(s):<14s} {top_k_line(logits[0], classes)}")
    for name, logits in out.fused.items():
        print(f"  {head_label('fused' + name):<14s} {top_k_line(logits[0], classes)}")
    for s, box in enumerate(out.abs_boxes, start=2):
        tx, ty, tl = box[0].tolist()
        print(f"  scale-{s} square: centre ({tx:.3f}, {ty:.3f}), half side {tl:.3f} of the input")
    mean, std = model.input_normalization
    panel = crop_panel(images.cpu(), out, mean=mean, std=std)
    with atomic_open(png, "wb") as f:
        to_pil_image(panel).save(f, format="PNG")
    print(f"  crops: {png}")
    return png


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", default="predictions", help="folder for the crop panels (default: predictions)")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    args = p.parse_args(argv)

    return run_main(lambda: predict_all(args))


def predict_all(args) -> int:
    device = resolve_device(args.device)
    model, classes, transform = load_model(args.checkpoint, device)
    check_writable_dir(args.out, "--out folder")
    failed = 0
    for path, name in zip(args.images, panel_names(args.images)):
        try:
            predict(model, classes, transform, path, os.path.join(args.out, name), device)
        except DatasetError as exc:  # an unreadable image: the others still run (a full disk stops it all)
            report(exc)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
