"""NABirds (555 leaf classes; 23,929 train / 24,633 test), read from the publisher's archive.

Layout under ``<data.root>/nabirds/`` (nabirds.tar.gz extracted in ``data.root``); image ids are UUIDs::

    images/<dir>/<uuid without hyphens>.jpg
    images.txt              "<uuid> <path under images/>"
    image_class_labels.txt  "<uuid> <class id>"        (leaf ids of the taxonomy, not contiguous)
    classes.txt             "<class id> <name with spaces>"  (every node of the taxonomy)
    train_test_split.txt    "<uuid> <1 = train | 0 = test>"
    bounding_boxes.txt      "<uuid> <x> <y> <w> <h>"   (pixels, top-left corner)
    parts/parts.txt         "<part id> <name>"          (11 parts, numbered from 0 or from 1)
    parts/part_locs.txt     "<uuid> <part id> <x> <y> <visible 0/1>"
    hierarchy.txt, sizes.txt, photographers.txt   (not needed here)

The classes are the leaf ids that image_class_labels.txt uses, mapped to 0..K-1 in increasing id
order and named as in classes.txt.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .annotated import Item, PublishedDataset, require_files
from .cub import _check_same_ids, _id_map, read_table
from ..errors import DatasetError

ARCHIVE = "nabirds.tar.gz"
NEEDED = ("images", "images.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt",
          "bounding_boxes.txt", "parts/parts.txt", "parts/part_locs.txt")


class NABirds(PublishedDataset):
    """NABirds in its published layout (module docstring)."""

    TOP = "nabirds"

    def _load(self, d: Path) -> tuple[list[Item], list[str], list[str]]:
        require_files(d, {rel: ARCHIVE for rel in NEEDED}, into=d.parent)
        p_img, p_lab, p_cls, p_split, p_box, p_parts, p_locs = (d / rel for rel in NEEDED[1:])
        images = _id_map(read_table(p_img, "<uuid> <path>", (str, str), True), p_img)
        labels = _id_map(read_table(p_lab, "<uuid> <class id>", (str, int)), p_lab)
        splits = _id_map(read_table(p_split, "<uuid> <0|1>", (str, int)), p_split)
        boxes = _id_map(read_table(p_box, "<uuid> <x> <y> <w> <h>", (str, float, float, float, float)), p_box)
        names = _id_map(read_table(p_cls, "<class id> <name>", (int, str), True), p_cls)
        if not images:
            raise DatasetError(f"{p_img} lists no images")
        for path, table in ((p_lab, labels), (p_split, splits), (p_box, boxes)):
            _check_same_ids(set(images), set(table), p_img, path)
        for i, (flag,) in splits.items():
            if flag not in (0, 1):
                raise DatasetError(f"{p_split}: image {i} has split flag {flag}, expected 0 or 1")
        leaves = sorted({c for (c,) in labels.values()})
        unnamed = [c for c in leaves if c not in names]
        if unnamed:
            raise DatasetError(f"{p_lab}: class id {unnamed[0]} is not in {p_cls}")
        label_of = {c: k for k, c in enumerate(leaves)}

        parts = _id_map(read_table(p_parts, "<part id> <name>", (int, str), True), p_parts)
        base = min(parts, default=0)
        if base not in (0, 1) or sorted(parts) != list(range(base, base + len(parts))):
            raise DatasetError(f"{p_parts}: part ids must be 0..{len(parts) - 1} or 1..{len(parts)} without gaps, "
                               f"got {sorted(parts)[:12]}")
        part_names = [parts[k][0] for k in sorted(parts)]
        locs = _id_map(read_table(p_locs, "<uuid> <part id> <x> <y> <visible>", (str, int, float, float, int)),
                       p_locs, key_cols=2)
        arrays = {i: np.zeros((len(parts), 3), np.float32) for i in images}
        for (i, k), (x, y, visible) in locs.items():
            if i not in images:
                raise DatasetError(f"{p_locs}: unknown image id {i} (not in {p_img})")
            if k not in parts:
                raise DatasetError(f"{p_locs}: image {i} has part id {k}, not in {p_parts}")
            if visible not in (0, 1):
                raise DatasetError(f"{p_locs}: image {i} part {k} has visible flag {visible}, expected 0 or 1")
            if visible:
                arrays[i][k - base] = (x, y, 1.0)

        items, missing = [], []
        for i in images:  # in the order of images.txt
            path = d / "images" / images[i][0]
            if not path.is_file():
                missing.append(path)
                continue
            x, y, w, h = boxes[i]
            items.append(Item(image_id=i, path=path, label=label_of[labels[i][0]],
                              subset="train" if splits[i][0] == 1 else "test", box=(x, y, x + w, y + h),
                              parts=arrays[i], box_source=str(p_box)))
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DatasetError(f"image listed in {p_img} but missing on disk: {missing[0]}{more} (from {ARCHIVE})")
        return items, [names[c][0] for c in leaves], part_names
