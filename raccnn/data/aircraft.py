"""FGVC-Aircraft 2013b (100 variants, 70 families, 30 manufacturers; 3,334 train / 3,333 val /
3,333 test), read from the publisher's archive.

Layout under ``<data.root>/fgvc-aircraft-2013b/data/`` (fgvc-aircraft-2013b.tar.gz extracted in
``data.root``)::

    images/<7-digit id>.jpg
    images_<level>_<train|val|trainval|test>.txt   "<id> <label name, may contain spaces>"
    images_box.txt                                  "<id> <xmin> <ymin> <xmax> <ymax>" (1-based pixels)
    variants.txt, families.txt, manufacturers.txt  the class names of each level, one a line

``label_level`` (``data.label_level``) picks variant, family or manufacturer; the classes are that
level's names in the order of its file. The publisher's validation split is used as it is: train on
``train``, validate on ``val``, ``trainval`` is both, test on ``test`` (``split_seed`` does not
apply, nor ``val_fraction`` but for 0: then ``train`` is ``trainval`` and there is no validation). Every image carries a 20-px copyright banner at its bottom, which the
authors ask users to remove: it is cut off when the image is read, and the boxes are clipped to the
picture that is left. There are no parts.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .annotated import Item, PublishedDataset, corners_from_one_based, require_files
from .cub import _id_map, read_table
from ..errors import DatasetError

LABEL_LEVELS = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}
ARCHIVE = "fgvc-aircraft-2013b.tar.gz"
BANNER = 20  # px at the bottom of every image


def read_names(path: Path) -> list[str]:
    """One class name a line; no name twice."""
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    seen = set()
    for name in names:
        if name in seen:
            raise DatasetError(f"{path}: class {name!r} is listed twice")
        seen.add(name)
    return names


class FGVCAircraft(PublishedDataset):
    """FGVC-Aircraft in its published layout (module docstring)."""

    TOP = "fgvc-aircraft-2013b"
    BANNER = BANNER

    def __init__(self, root: str | Path, split: str = "train", label_level: str = "variant", **kwargs):
        if label_level not in LABEL_LEVELS:
            raise ValueError(f"label_level must be one of {tuple(LABEL_LEVELS)}, got {label_level!r}")
        self.label_level = label_level
        super().__init__(root, split, **kwargs)

    def _load(self, d: Path) -> tuple[list[Item], list[str], list[str]]:
        level = self.label_level
        lists = {s: f"data/images_{level}_{s}.txt" for s in ("train", "val", "trainval", "test")}
        require_files(d, {"data/images": ARCHIVE, f"data/{LABEL_LEVELS[level]}": ARCHIVE,
                          **{rel: ARCHIVE for rel in lists.values()}, "data/images_box.txt": ARCHIVE},
                      into=d.parent)
        names_file = d / "data" / LABEL_LEVELS[level]
        classes = read_names(names_file)
        index = {name: k for k, name in enumerate(classes)}
        subset_of: dict[str, str] = {}
        labels: dict[str, int] = {}
        for subset in ("train", "val", "test"):
            path = d / lists[subset]
            for image_id, (name,) in _id_map(read_table(path, "<image id> <label>", (str, str), True), path).items():
                if name not in index:
                    raise DatasetError(f"{path}: image {image_id} has label {name!r}, which {names_file} does not list")
                if image_id in subset_of:
                    raise DatasetError(f"{path}: image {image_id} is also in {d / lists[subset_of[image_id]]}")
                subset_of[image_id], labels[image_id] = subset, index[name]
        p_tv = d / lists["trainval"]
        trainval = set(_id_map(read_table(p_tv, "<image id> <label>", (str, str), True), p_tv))
        expected = {i for i, s in subset_of.items() if s in ("train", "val")}
        if trainval != expected:
            odd = sorted(trainval ^ expected)
            raise DatasetError(f"{p_tv} is not the union of the train and val lists (image {odd[0]} differs"
                               f"{f', and {len(odd) - 1} more' if len(odd) > 1 else ''})")
        p_box = d / "data" / "images_box.txt"
        boxes = _id_map(read_table(p_box, "<image id> <xmin> <ymin> <xmax> <ymax>", (str, float, float, float, float)),
                        p_box)
        items, missing = [], []
        for image_id in sorted(subset_of):
            if image_id not in boxes:
                raise DatasetError(f"{p_box}: no box for image {image_id}")
            path = d / "data" / "images" / f"{image_id}.jpg"
            if not path.is_file():
                missing.append(path)
                continue
            items.append(Item(image_id=image_id, path=path, label=labels[image_id], subset=subset_of[image_id],
                              box=corners_from_one_based(*boxes[image_id]), parts=np.zeros((0, 3), np.float32),
                              box_source=str(p_box)))
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DatasetError(f"image listed in {d / 'data'}/images_{level}_*.txt but missing on disk: "
                               f"{missing[0]}{more} (from {ARCHIVE})")
        return items, classes, []
