"""What the readers of the publishers' own files share (Stanford Dogs, Stanford Cars, FGVC-Aircraft,
NABirds): finding the dataset's folder, naming a missing file and the archive it comes from, and the
dataset class that turns parsed annotations into samples.

A reader (a subclass of :class:`PublishedDataset`) parses its files into :class:`Item` records in the
pixels of the files on disk; this class checks the images (:mod:`raccnn.data.verify`) and the boxes,
picks the split and returns the samples of :class:`raccnn.data.cub.CUBDataset`: ``image``, ``label``,
``index``, ``box`` [4] XYXY, ``parts`` [P, 3] and ``part_boxes`` [P, 4] (NaN: no dataset here has
part boxes), with the same transforms and ``cache`` modes.

Splits: a dataset whose publisher fixes a validation split (FGVC-Aircraft) uses it (``train``,
``val``, ``trainval`` = both, ``test``); the others carve ``val`` from the official training
images with ``val_fraction`` and ``split_seed`` (:func:`raccnn.data.splits.choose_split`), as CUB.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.io
import torch

from .cache import ItemCache
from ..errors import DatasetError
from .images import load_rgb, pil_to_uint8
from .splits import SPLITS, choose_split
from .transforms import build_transforms, finalize, flip_permutation, make_sample
from .verify import drop_unreadable, unreadable_message, verify_images


@dataclass
class Item:
    """One image's annotation, in the pixels of its file on disk."""

    image_id: str
    path: Path
    label: int             # 0-based
    subset: str            # official split: "train", "val" or "test"
    box: tuple             # x1, y1, x2, y2, continuous pixel corners
    parts: np.ndarray      # [P, 3] x, y, visible
    box_source: str        # the file the box was read from (for messages)


def dataset_dir(root: str | Path, top: str) -> Path:
    """``root/top``, or ``root`` itself when it is already named ``top``."""
    root = Path(root)
    return root if root.name == top else root / top


def require_files(d: Path, needed: dict[str, str], into: Path | None = None) -> None:
    """Stop at the first of ``needed`` (path under ``d`` -> the archive it comes from) that is absent;
    ``into`` is the folder the archives are extracted in (default ``d``)."""
    for rel, archive in needed.items():
        path = d / rel
        if not path.exists():
            verb = "extract" if archive.endswith((".tar", ".tgz", ".tar.gz")) else "put"
            raise DatasetError(f"missing {path}: {verb} {archive} into {into or d} so that {path} exists "
                               f"(data.root is the folder that holds {d.name}/)")


def corners_from_one_based(x1: float, y1: float, x2: float, y2: float) -> tuple:
    """A box given as the 1-based indices of its first and last pixel (MATLAB and VOC style), as
    continuous corners in 0-based pixels."""
    return (float(x1) - 1.0, float(y1) - 1.0, float(x2), float(y2))


def load_mat(path: Path, keys: tuple[str, ...]) -> dict:
    """The variables ``keys`` of a MATLAB file, with singleton dimensions squeezed."""
    try:
        data = scipy.io.loadmat(path, squeeze_me=True)
    except (OSError, ValueError, TypeError, scipy.io.matlab.MatReadError) as exc:
        raise DatasetError(f"cannot read {path} as a MATLAB file: {exc}") from None
    missing = [k for k in keys if k not in data]
    if missing:
        raise DatasetError(f"{path} has no variable {missing[0]!r} (expected {', '.join(keys)})")
    return {k: data[k] for k in keys}


def mat_strings(value, path: Path, key: str) -> list[str]:
    """A cell array of strings read by :func:`load_mat`, as a list."""
    out = []
    for v in np.atleast_1d(value).ravel():
        v = np.asarray(v)
        if v.dtype.kind not in "US" or v.size != 1:
            raise DatasetError(f"{path}: {key} must be a cell array of strings, found an entry {v!r}")
        out.append(str(v.item()))
    return out


def mat_ints(value, path: Path, key: str) -> list[int]:
    """A numeric array (or a struct field) read by :func:`load_mat`, as whole numbers."""
    try:
        values = [float(v) for v in np.atleast_1d(value).ravel()]
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: {key} must hold numbers") from None
    bad = [v for v in values if not (np.isfinite(v) and v == int(v))]
    if bad:
        raise DatasetError(f"{path}: {key} must hold whole numbers, found {bad[0]}")
    return [int(v) for v in values]


def open_annotated(dataset, root: Path, split: str, transform: Callable | None, load: Callable,
                   verify: str) -> tuple[list, dict, list]:
    """What every annotated dataset (CUB's layout and the published ones) does first: set its
    folder, split and transform (None: the stored size, converted and normalised), read its
    records, classes and parts (``load(root)``), the flip permutation of its parts, and check its
    images (``verify_images``). Returns (records, image sizes, unreadable images)."""
    dataset.root, dataset.split = root, split
    dataset.transform = transform if transform is not None else build_transforms(False, None, None)
    records, dataset.classes, dataset.part_names = load(root)
    dataset.num_classes = len(dataset.classes)
    dataset.flip_perm = flip_permutation(dataset.part_names)
    sizes, bad = verify_images([r.path for r in records], verify, root)
    return records, sizes, bad


class PublishedDataset(torch.utils.data.Dataset):
    """A dataset read from its publisher's files; subclasses set ``TOP`` and implement ``_load``.

    ``transform``, ``val_fraction``, ``split_seed``, ``skip_unreadable``, ``verify``, ``max_images``
    and ``cache`` work as in :class:`raccnn.data.cub.CUBDataset`.
    """

    TOP = ""       # the dataset's own top folder under data.root
    BANNER = 0     # rows removed from the bottom of every image (a copyright strip)

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None,
                 val_fraction: float = 0.1, split_seed: int = 0, skip_unreadable: bool = False,
                 verify: str = "header", max_images: int = 0, cache: str = "none"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        items, sizes, bad = open_annotated(self, dataset_dir(root, self.TOP), split, transform, self._load, verify)
        self._check_boxes(items, sizes)
        if bad and not skip_unreadable:
            raise DatasetError(unreadable_message(bad, str(self.root)))
        chosen = drop_unreadable(self._choose(split, items, val_fraction, split_seed), bad, lambda it: it.path, split)
        if not chosen:
            counts = ", ".join(f"{sum(it.subset == s for it in items)} official {s}" for s in ("train", "val", "test"))
            raise DatasetError(f"split {split!r} of {self.root} is empty (val_fraction={val_fraction}; {counts})")
        self.records = chosen[:max_images] if max_images else chosen
        self.targets = [it.label for it in self.records]
        self.cache = ItemCache(cache, len(self.records), self._decode, self._build)  # data/cache.py

    def _load(self, d: Path) -> tuple[list[Item], list[str], list[str]]:
        """Every image's :class:`Item` (in a fixed order), the class names and the part names."""
        raise NotImplementedError

    @staticmethod
    def _choose(split: str, items: list[Item], val_fraction: float, seed: int) -> list[Item]:
        by_subset = {s: [it for it in items if it.subset == s] for s in ("train", "val", "test")}
        if by_subset["val"]:  # the publisher's validation split; val_fraction 0: trained on too
            by_subset["trainval"] = by_subset["train"] + by_subset["val"]
            if val_fraction == 0:
                by_subset["train"], by_subset["val"] = by_subset["trainval"], []
            return by_subset[split]
        return choose_split(split, by_subset["train"], by_subset["test"], lambda it: it.label, val_fraction, seed)

    def _check_boxes(self, items: list[Item], sizes: dict) -> None:
        """A box must have an area and a pixel inside its image (``sizes``: the checked images'
        width and height); an image must be taller than the banner removed from it."""
        for it in items:
            x1, y1, x2, y2 = it.box
            if not (x2 > x1 and y2 > y1):
                raise DatasetError(f"{it.box_source}: the box of image {it.image_id} ({x1:g}, {y1:g}, {x2:g}, {y2:g}) "
                                   f"has no area")
            if it.path not in sizes:
                continue
            w, h = sizes[it.path]
            if h <= self.BANNER:
                raise DatasetError(f"{it.path} is {w}x{h} px: nothing is left above its {self.BANNER}-px banner")
            h -= self.BANNER
            if x1 >= w or y1 >= h or x2 <= 0 or y2 <= 0:
                raise DatasetError(f"{it.box_source}: the box of image {it.image_id} ({x1:g}, {y1:g}, {x2:g}, {y2:g}) "
                                   f"lies entirely outside the {w}x{h} picture of {it.path}")

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.records)

    def annotation(self, index: int) -> dict:
        """Raw annotation of item ``index`` in the pixels of its file, without decoding the image
        (the keys of :meth:`raccnn.data.cub.CUBDataset.annotation`)."""
        it = self.records[index]
        x1, y1, x2, y2 = it.box
        return {"image_id": it.image_id, "path": str(it.path), "label": it.label,
                "box_xywh": (x1, y1, x2 - x1, y2 - y1), "parts": it.parts.copy(),
                "part_boxes_xywh": np.full((len(self.part_names), 4), np.nan, dtype=np.float32)}

    def __getitem__(self, index: int) -> dict:
        """The sample of :meth:`raccnn.data.cub.CUBDataset.__getitem__`."""
        return self.cache[index]

    def _decode(self, index: int) -> torch.Tensor:
        image = pil_to_uint8(load_rgb(self.records[index].path, exif_transpose=False))  # boxes: stored pixels
        if self.BANNER:
            h = image.shape[-2]
            if h <= self.BANNER:
                raise DatasetError(f"{self.records[index].path} is {h} px tall: nothing is left above its "
                                   f"{self.BANNER}-px banner")
            image = image[:, : h - self.BANNER].clone()
        return image

    def _build(self, index: int, image: torch.Tensor) -> dict:
        it = self.records[index]
        h, w = image.shape[-2:]
        x1, y1, x2, y2 = it.box  # clipped to the picture (below a removed banner, say)
        box = (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))
        parts = torch.from_numpy(it.parts)
        no_boxes = torch.full((len(self.part_names), 4), float("nan"))
        sample = make_sample(image, box, parts[:, :2], parts[:, 2] > 0, no_boxes, self.flip_perm)
        out = finalize(self.transform(sample))
        out["label"] = torch.tensor(it.label, dtype=torch.int64)
        out["index"] = torch.tensor(index, dtype=torch.int64)
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.num_classes}, parts={len(self.part_names)})")
