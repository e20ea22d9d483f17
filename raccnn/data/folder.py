"""Class-per-folder datasets (own data, Stanford Dogs/Cars exported to folders, ...).

Two layouts are accepted:

1. ``root/train/<class>/*`` and ``root/test/<class>/*`` -- the test split is ``root/test``.
2. ``root/<class>/*`` (no ``train``/``test`` folders) -- the test split is carved from all
   images by the class-stratified rule of :func:`raccnn.data.splits.stratified_split` with
   ``test_fraction`` and a FIXED seed (``TEST_SPLIT_SEED``), so changing ``split_seed`` never
   moves images between the test split and the others.

In both layouts ``val`` is carved from the training images with ``val_fraction`` and
``split_seed``.  Classes are the sorted training class-folder names; a class's images are all
image files under its folder, subfolders included.  Hidden files and folders (a leading dot, e.g.
macOS ``._name.jpg`` resource forks) are skipped.  Photos are turned upright as their EXIF
orientation says (:func:`raccnn.data.images.load_rgb`).  Samples have the same
keys as :class:`raccnn.data.cub.CUBDataset`, with ``box`` NaN and zero parts, and the same
``cache`` modes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from .cache import ItemCache
from ..errors import DatasetError
from .images import load_rgb, pil_to_uint8
from .splits import choose_split, stratified_split
from .transforms import build_transforms, finalize, make_sample
from .verify import drop_unreadable, unreadable_message, verify_images

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TEST_SPLIT_SEED = 0


def _images_under(cdir: Path) -> list[Path]:
    """The image files anywhere under ``cdir`` (its subfolders too), sorted; hidden files and
    folders (a leading dot: ``.git``, macOS ``._name.jpg`` resource forks) are skipped."""
    files = []
    for parent, dirs, names in os.walk(cdir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [Path(parent) / n for n in names
                  if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(p for p in files if p.is_file())


def _scan(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """List (path, label) of images under ``folder/<class>/``; every class folder must have images."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DatasetError(f"no class folders in {folder} (expected {folder}/<class name>/<images>)")
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DatasetError(f"class folders {unknown} in {folder} have no counterpart in the training folder")
    items = []
    for label, name in enumerate(classes):
        cdir = folder / name
        if not cdir.is_dir():
            continue  # a class may be absent from the test folder
        files = _images_under(cdir)
        if not files:
            raise DatasetError(f"class folder {cdir} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        items += [(p, label) for p in files]
    return classes, items


class FolderDataset(torch.utils.data.Dataset):
    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None,
                 val_fraction: float = 0.1, split_seed: int = 0, test_fraction: float = 0.2,
                 skip_unreadable: bool = False, verify: str = "header", max_images: int = 0,
                 cache: str = "none"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(
                f"dataset folder {self.root} does not exist; expected {self.root}/train/<class>/<images> "
                f"and {self.root}/test/<class>/<images>, or {self.root}/<class>/<images>"
            )
        self.split = split
        self.transform = transform if transform is not None else build_transforms(False, None, None)

        if (self.root / "train").is_dir():
            if not (self.root / "test").is_dir():
                raise DatasetError(f"{self.root}/train exists but {self.root}/test does not")
            self.layout = "train/test folders"
            self.classes, pool = _scan(self.root / "train")
            _, test = _scan(self.root / "test", self.classes)
        else:
            self.layout = "single folder, stratified test split"
            self.classes, everything = _scan(self.root)
            rest, te = stratified_split([l for _, l in everything], test_fraction, TEST_SPLIT_SEED)
            pool = [everything[i] for i in rest]
            test = [everything[i] for i in te]

        _, bad = verify_images([path for path, _ in pool + test], verify, self.root)
        if bad and not skip_unreadable:
            raise DatasetError(unreadable_message(bad, str(self.root)))
        chosen = choose_split(split, pool, test, lambda item: item[1], val_fraction, split_seed)
        chosen = drop_unreadable(chosen, bad, lambda item: item[0], split)
        if not chosen:
            raise DatasetError(f"split {split!r} of {self.root} ({self.layout}) is empty")
        self.samples = chosen[:max_images] if max_images else chosen
        self.targets = [l for _, l in self.samples]
        self.num_classes = len(self.classes)
        self.part_names: list[str] = []
        self.cache = ItemCache(cache, len(self.samples), self._decode, self._build)  # data/cache.py

    def __len__(self) -> int:
        return len(self.samples)

    def annotation(self, index: int) -> dict:
        path, label = self.samples[index]
        return {"path": str(path), "label": label}

    def __getitem__(self, index: int) -> dict:
        return self.cache[index]

    def _decode(self, index: int) -> torch.Tensor:
        return pil_to_uint8(load_rgb(self.samples[index][0]))

    def _build(self, index: int, image: torch.Tensor) -> dict:
        empty = torch.zeros(0, 2)
        sample = make_sample(image, None, empty, torch.zeros(0, dtype=torch.bool), torch.zeros(0, 4), ())
        out = finalize(self.transform(sample))
        out["label"] = torch.tensor(self.samples[index][1], dtype=torch.int64)
        out["index"] = torch.tensor(index, dtype=torch.int64)
        return out
