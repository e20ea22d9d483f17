"""Certificate for the FG-Synth benchmark: the discriminative part must matter.

Trains the same small classifier (backbone -> global average pool -> linear) twice:
  (a) on whole images downsampled to the model input size (what RA-CNN's scale 1 sees);
  (b) on the "oracle crop": a square centred on the ground-truth crest box (half side =
      margin * max(w, h) / 2) cut from the full-resolution image and resized to the same
      input size (what a perfect attention zoom would see).
The benchmark is valid when (b) >= 90 % and (b) - (a) >= 25 points on the test split. The set is
generated at ``--size`` px with the texture scale the config would use for a ``--input-size``
scale 1, and the signal-level check (``raccnn.data.synthetic.certificate``) is printed beside it.
Optionally (c): whole images downsampled WITHOUT anti-aliasing, to show how much texture
leaks through aliasing when a pipeline shrinks images with plain bilinear sampling.

    python experiments/calibrate_fgsynth.py --data data/fgsynth --out work_dirs/calibration
    python experiments/calibrate_fgsynth.py --data data/fgsynth_320 --size 320 --out work_dirs/calibration_320
    python experiments/calibrate_fgsynth.py --data data/fgsynth --distractor --out work_dirs/calibration_distractor
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from raccnn.data import CUBDataset, DISCRIMINATIVE_PART, IMAGENET_MEAN, IMAGENET_STD, ensure_fgsynth
from raccnn.data.images import load_rgb
from raccnn.data.synthetic import certificate, fgsynth_root, texture_scale_for
from raccnn.models.backbones import build_backbone
from raccnn.models.boxes import part_squares


def load_split(root: Path, split: str, val_fraction: float, split_seed: int):
    """All images of a split as uint8 [N,3,S,S], labels [N] and crest boxes [N,4] XYXY."""
    ds = CUBDataset(root, split=split, val_fraction=val_fraction, split_seed=split_seed)
    k = ds.part_names.index(DISCRIMINATIVE_PART)
    images, labels, boxes = [], [], []
    for i in range(len(ds)):
        ann = ds.annotation(i)
        images.append(TF.pil_to_tensor(load_rgb(Path(ann["path"]))))
        labels.append(ann["label"])
        x, y, w, h = ann["part_boxes_xywh"][k].tolist()
        boxes.append([x, y, x + w, y + h])
    return torch.stack(images), torch.tensor(labels), torch.tensor(boxes), ds.num_classes


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    x = x_uint8.float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def whole_inputs(images: torch.Tensor, size: int, antialias: bool = True) -> torch.Tensor:
    x = normalise(images)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)


def oracle_inputs(images: torch.Tensor, boxes: torch.Tensor, size: int, margin: float) -> torch.Tensor:
    x = normalise(images)
    height, width = images.shape[-2:]
    scale = torch.tensor([width, height, min(width, height)])
    out = []
    for img, square in zip(x, part_squares(boxes[:, None], 0, height, width, margin).double() * scale):
        cx, cy, half = square.tolist()
        top, left, side = round(cy - half), round(cx - half), max(1, round(2 * half))
        # resized_crop pads with zeros where the square leaves the image
        out.append(TF.resized_crop(img, top, left, side, side, [size, size], antialias=True))
    return torch.stack(out)


class Classifier(nn.Module):
    def __init__(self, num_classes: int, backbone: str, width: int):
        super().__init__()
        self.backbone = build_backbone(backbone, width=width)
        self.fc = nn.Linear(self.backbone.out_channels, num_classes)

    def forward(self, x):
        return self.fc(self.backbone(x).mean(dim=(2, 3)))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return 100.0 * (pred == y).float().mean().item()


def train_eval(x_tr, y_tr, evals: dict, num_classes: int, args, seed: int) -> dict:
    """Train from scratch with Adam + cosine schedule and random horizontal flips."""
    torch.manual_seed(seed)
    model = Classifier(num_classes, args.backbone, args.width)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * ((len(x_tr) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_tr), generator=g)
        for i in range(0, len(x_tr), args.batch_size):
            idx = order[i:i + args.batch_size]
            xb, yb = x_tr[idx], y_tr[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return {name: accuracy(model, x, y) for name, (x, y) in evals.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/fgsynth", help="folder holding (or to receive) CUB_200_2011/")
    p.add_argument("--out", default="work_dirs/calibration")
    p.add_argument("--size", type=int, default=160, help="stored image side (data.synth.size)")
    p.add_argument("--input-size", type=int, default=64, help="scale 1's view of the whole image, and the zoom's size")
    p.add_argument("--margin", type=float, default=1.1, help="oracle square half side = margin * max(w, h) / 2")
    p.add_argument("--backbone", default="vgg_small")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2, help="as data.val_fraction of fgsynth_default.yaml")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--distractor", action="store_true", help="the variant with distractors (data.synth.distractor), "
                   "read from (or written to) DATA/distractor")
    p.add_argument("--skip-aliasing-check", action="store_true", help="skip run (c)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    cert = certificate(args.size, args.input_size)
    print(f"certificate: factor {cert['factor']:.2f}, texture scale {cert['texture_scale']}, fine texture keeps "
          f"{cert['fine_at_scale1']:.1%} of its contrast at scale 1 -> {cert['problem'] or 'passes'}", flush=True)
    root = ensure_fgsynth(fgsynth_root(args.data, args.distractor), size=args.size,
                          texture_scale=texture_scale_for(args.size, args.input_size), distractor=args.distractor)
    data = {s: load_split(root, s, args.val_fraction, args.seed) for s in ("train", "val", "test")}
    num_classes = data["train"][3]
    s = args.input_size
    runs = {
        "whole image (anti-aliased resize)": lambda im, bx: whole_inputs(im, s, True),
        "oracle crest crop": lambda im, bx: oracle_inputs(im, bx, s, args.margin),
    }
    if not args.skip_aliasing_check:
        runs["whole image (plain bilinear, no anti-aliasing)"] = lambda im, bx: whole_inputs(im, s, False)

    results = {}
    for name, make in runs.items():
        t = time.perf_counter()
        xs = {k: (make(im, bx), y) for k, (im, y, bx, _) in data.items()}
        accs = train_eval(*xs["train"], {"val": xs["val"], "test": xs["test"]}, num_classes, args, args.seed)
        results[name] = dict(accs, seconds=round(time.perf_counter() - t, 1))
        print(f"{name}: val {accs['val']:.1f} %, test {accs['test']:.1f} % ({results[name]['seconds']} s)", flush=True)

    a = results["whole image (anti-aliased resize)"]["test"]
    b = results["oracle crest crop"]["test"]
    passed = b >= 90.0 and b - a >= 25.0
    n_img = int(data["train"][0].shape[-1])
    print(f"\nFG-Synth {root} ({num_classes} classes, stored {n_img} px, input {s} px, "
          f"train/val/test = {len(data['train'][1])}/{len(data['val'][1])}/{len(data['test'][1])})\n")
    print("| input | val acc (%) | test acc (%) |")
    print("|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['val']:.1f} | {r['test']:.1f} |")
    print(f"\ngap (oracle - whole) = {b - a:.1f} points; targets: oracle >= 90 and gap >= 25 -> "
          f"{'PASS' if passed else 'FAIL'}  (total {time.perf_counter() - t0:.0f} s)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = dict(
        data=str(root), args=vars(args), stored_size=n_img, num_classes=num_classes,
        n_train=len(data["train"][1]), n_val=len(data["val"][1]), n_test=len(data["test"][1]),
        results=results, gap=b - a, passed=passed, certificate=cert,
    )
    (out / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'calibration.json'}")


if __name__ == "__main__":
    main()
