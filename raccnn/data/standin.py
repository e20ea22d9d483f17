"""A stand-in for CUB-200-2011 of its real shape, for testing and benchmarking without the photos.

``write_cub_standin`` writes the official ``CUB_200_2011/`` layout (``images/NNN.Name/*.jpg`` and
every annotation file, with the 15 parts of CUB) holding JPEGs of about CUB's size (around 500 x 375,
the side lengths varying by image) and about CUB's file size: smooth random colour fields with a
little fine noise. At full size (``images_per_class=None``) it has CUB's 11,788 images split
5,994 / 5,794 over 200 classes. The pictures carry no class signal: use it to exercise the paper's
config end to end and to measure data loading and image checking, never to measure accuracy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CUB_PARTS = ("back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing",
             "nape", "right eye", "right leg", "right wing", "tail", "throat")
CUB_TRAIN, CUB_TEST, CUB_CLASSES = 5994, 5794, 200


def _picture(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    coarse = rng.integers(0, 256, (h // 24 + 2, w // 24 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
    grain = rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def write_cub_standin(root: str | Path, classes: int = CUB_CLASSES, images_per_class: int | None = None,
                      size: tuple[int, int] = (500, 375), seed: int = 0) -> Path:
    """Write the stand-in under ``root/CUB_200_2011`` and return that folder. ``images_per_class``
    (at least 2: one train, one test image) gives a smaller set; None gives CUB's counts."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "CUB_200_2011"
    (d / "parts").mkdir(parents=True, exist_ok=True)
    if images_per_class is None:  # CUB's own totals, spread as evenly as they go
        train = [CUB_TRAIN // classes + (c < CUB_TRAIN % classes) for c in range(classes)]
        test = [CUB_TEST // classes + (c < CUB_TEST % classes) for c in range(classes)]
    else:
        if images_per_class < 2:
            raise ValueError(f"images_per_class must be >= 2 (a train and a test image), got {images_per_class}")
        train = [(images_per_class + 1) // 2] * classes
        test = [images_per_class // 2] * classes
    names = [f"{c + 1:03d}.Standin_{c + 1}" for c in range(classes)]
    rows = {k: [] for k in ("images", "split", "labels", "boxes", "locs")}
    i = 0
    for c, name in enumerate(names):
        (d / "images" / name).mkdir(parents=True, exist_ok=True)
        for j in range(train[c] + test[c]):
            i += 1
            w = int(size[0] * rng.uniform(0.85, 1.0))
            h = int(size[1] * rng.uniform(0.85, 1.0))
            rel = f"{name}/standin_{i:05d}.jpg"
            _picture(rng, w, h).save(d / "images" / rel, "JPEG", quality=90)
            bw, bh = rng.uniform(0.3, 0.8) * w, rng.uniform(0.3, 0.8) * h
            bx, by = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            rows["images"].append(f"{i} {rel}")
            rows["split"].append(f"{i} {int(j < train[c])}")
            rows["labels"].append(f"{i} {c + 1}")
            rows["boxes"].append(f"{i} {bx:.1f} {by:.1f} {bw:.1f} {bh:.1f}")
            for k in range(len(CUB_PARTS)):
                visible = rng.random() < 0.8
                x, y = (bx + rng.uniform(0, bw), by + rng.uniform(0, bh)) if visible else (0.0, 0.0)
                rows["locs"].append(f"{i} {k + 1} {x:.1f} {y:.1f} {int(visible)}")
    files = {"images.txt": rows["images"], "train_test_split.txt": rows["split"],
             "image_class_labels.txt": rows["labels"], "bounding_boxes.txt": rows["boxes"],
             "classes.txt": [f"{c + 1} {n}" for c, n in enumerate(names)],
             "parts/parts.txt": [f"{k + 1} {p}" for k, p in enumerate(CUB_PARTS)],
             "parts/part_locs.txt": rows["locs"]}
    for rel, lines in files.items():
        (d / rel).write_text("\n".join(lines) + "\n")
    return d
