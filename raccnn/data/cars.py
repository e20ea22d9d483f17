"""Stanford Cars (196 models; 8,144 train / 8,041 test), read from the publisher's archives.

Layout under ``<data.root>/stanford_cars/`` (torchvision's ``StanfordCars`` layout: cars_train.tgz,
cars_test.tgz and car_devkit.tgz extracted there, cars_test_annos_withlabels.mat beside them)::

    cars_train/00001.jpg ...        cars_test/00001.jpg ...
    devkit/cars_train_annos.mat     annotations: 1 x N struct, fields bbox_x1 bbox_y1 bbox_x2 bbox_y2
    cars_test_annos_withlabels.mat      class (1-based) fname
    devkit/cars_meta.mat            class_names: 1 x 196 cell

The official split is the two annotation files. Box corners are 1-based pixel indices (MATLAB).
There are no parts. ``torchvision.datasets.StanfordCars`` reads the same files but keeps only the
file name and class (the boxes are dropped) and reports any missing file as "Dataset not found",
so the files are read here with scipy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .annotated import Item, PublishedDataset, corners_from_one_based, load_mat, mat_ints, mat_strings, require_files
from ..errors import DatasetError

NEEDED = {"devkit/cars_meta.mat": "car_devkit.tgz", "devkit/cars_train_annos.mat": "car_devkit.tgz",
          "cars_test_annos_withlabels.mat": "cars_test_annos_withlabels.mat",
          "cars_train": "cars_train.tgz", "cars_test": "cars_test.tgz"}
FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")


def read_annotations(path: Path) -> list[tuple[str, int, tuple]]:
    """(file name, 1-based class, corners x1 y1 x2 y2 as written) per entry of an annotations file."""
    a = np.atleast_1d(load_mat(path, ("annotations",))["annotations"])
    missing = [f for f in FIELDS if f not in (a.dtype.names or ())]
    if missing:
        raise DatasetError(f"{path}: annotations has no field {missing[0]!r} (expected {', '.join(FIELDS)})")
    names = mat_strings(a["fname"], path, "annotations.fname")
    classes = mat_ints(a["class"], path, "annotations.class")
    corners = list(zip(*(mat_ints(a[f], path, f"annotations.{f}") for f in FIELDS[:4])))
    return list(zip(names, classes, corners))


class StanfordCars(PublishedDataset):
    """Stanford Cars in its published layout (module docstring)."""

    TOP = "stanford_cars"

    def _load(self, d: Path) -> tuple[list[Item], list[str], list[str]]:
        require_files(d, NEEDED)
        meta = d / "devkit" / "cars_meta.mat"
        classes = mat_strings(load_mat(meta, ("class_names",))["class_names"], meta, "class_names")
        items, missing = [], []
        for subset, ann, folder in (("train", d / "devkit" / "cars_train_annos.mat", "cars_train"),
                                    ("test", d / "cars_test_annos_withlabels.mat", "cars_test")):
            for name, c, corners in read_annotations(ann):
                if not 1 <= c <= len(classes):
                    raise DatasetError(f"{ann}: image {name} has class {c}, out of range 1..{len(classes)} of {meta}")
                path = d / folder / name
                if not path.is_file():
                    missing.append((path, ann))
                    continue
                items.append(Item(image_id=f"{folder}/{name}", path=path, label=c - 1, subset=subset,
                                  box=corners_from_one_based(*corners), parts=np.zeros((0, 3), np.float32),
                                  box_source=str(ann)))
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DatasetError(f"image listed in {missing[0][1]} but missing on disk: {missing[0][0]}{more}")
        return items, classes, []
