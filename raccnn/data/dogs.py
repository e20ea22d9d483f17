"""Stanford Dogs (120 breeds; 12,000 train / 8,580 test), read from the publisher's archives.

Layout under ``<data.root>/stanford_dogs/`` (images.tar, annotation.tar and lists.tar extracted there)::

    Images/<wnid>-<Breed>/<wnid>_<n>.jpg
    Annotation/<wnid>-<Breed>/<wnid>_<n>     VOC-style XML without extension: <size>, one or more
                                              <object> with <bndbox><xmin><ymin><xmax><ymax>
    train_list.mat, test_list.mat            file_list (cell of paths under Images/), annotation_list
                                              (the same under Annotation/, no extension), labels (1-based)

The official split is the two lists. A class is named by its folder (``<wnid>-<Breed>``), in label
order. An image's box is the largest of its objects (most images have one dog); box corners are
1-based pixel indices, as in VOC. There are no parts.
"""
from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .annotated import Item, PublishedDataset, corners_from_one_based, load_mat, mat_ints, mat_strings, require_files
from ..errors import DatasetError

NEEDED = {"train_list.mat": "lists.tar", "test_list.mat": "lists.tar", "Images": "images.tar",
          "Annotation": "annotation.tar"}


def read_list(path: Path) -> list[tuple[str, str, int]]:
    """(image path under Images/, annotation path under Annotation/, 1-based label) per entry."""
    m = load_mat(path, ("file_list", "annotation_list", "labels"))
    files = mat_strings(m["file_list"], path, "file_list")
    annotations = mat_strings(m["annotation_list"], path, "annotation_list")
    labels = mat_ints(m["labels"], path, "labels")
    if not len(files) == len(annotations) == len(labels):
        raise DatasetError(f"{path}: file_list, annotation_list and labels have {len(files)}, {len(annotations)} "
                           f"and {len(labels)} entries")
    return list(zip(files, annotations, labels))


def largest_box(path: Path) -> tuple:
    """The largest object box of a VOC-style annotation file, as continuous corners."""
    try:
        st = path.stat()
    except OSError:
        raise DatasetError(f"missing annotation file {path} (from annotation.tar)") from None
    return _parse_largest_box(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=1 << 16)  # the splits of one run share the parse; a changed file is read again
def _parse_largest_box(path: str, mtime_ns: int, size: int) -> tuple:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise DatasetError(f"{path}: not a readable XML annotation ({exc})") from None
    boxes = []
    for k, obj in enumerate(root.iter("object"), start=1):
        try:
            corners = [float(obj.findtext(f"bndbox/{tag}")) for tag in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: object {k} has no numeric <bndbox> xmin, ymin, xmax, ymax") from None
        boxes.append(corners_from_one_based(*corners))
    if not boxes:
        raise DatasetError(f"{path}: no <object> with a <bndbox>")
    return max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))


class StanfordDogs(PublishedDataset):
    """Stanford Dogs in its published layout (module docstring)."""

    TOP = "stanford_dogs"

    def _load(self, d: Path) -> tuple[list[Item], list[str], list[str]]:
        require_files(d, NEEDED)
        entries = [(subset, *e) for subset in ("train", "test") for e in read_list(d / f"{subset}_list.mat")]
        folders: dict[int, str] = {}
        for subset, file, _, label in entries:
            folder = Path(file).parts[0]
            if folders.setdefault(label, folder) != folder:
                raise DatasetError(f"{d / f'{subset}_list.mat'}: label {label} holds images of two folders, "
                                   f"{folders[label]} and {folder}")
        if sorted(folders) != list(range(1, len(folders) + 1)):
            raise DatasetError(f"{d / 'train_list.mat'}, {d / 'test_list.mat'}: labels must be 1..{len(folders)} "
                               f"without gaps, got {sorted(folders)[:10]}")
        items, missing = [], []
        for subset, file, annotation, label in entries:
            path = d / "Images" / file
            if not path.is_file():
                missing.append(path)
                continue
            box_file = d / "Annotation" / annotation
            items.append(Item(image_id=Path(file).stem, path=path, label=label - 1, subset=subset,
                              box=largest_box(box_file), parts=np.zeros((0, 3), np.float32), box_source=str(box_file)))
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DatasetError(f"image listed in {d}/*_list.mat but missing on disk: {missing[0]}{more} (from images.tar)")
        return items, [folders[k] for k in sorted(folders)], []
