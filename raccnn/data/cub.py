"""CUB-200-2011 (and any folder in the same layout, e.g. FG-Synth).

Layout under ``<root>/CUB_200_2011/`` (``root`` may also be that folder itself)::

    images.txt              "<image_id> <relative path under images/>"
    train_test_split.txt    "<image_id> <1 = train | 0 = test>"
    classes.txt             "<class_id> <name>"          (ids 1..K)
    image_class_labels.txt  "<image_id> <class_id>"
    bounding_boxes.txt      "<image_id> <x> <y> <w> <h>"  (float pixels, top-left corner)
    parts/parts.txt         "<part_id> <name with spaces>" (optional, ids 1..P)
    parts/part_locs.txt     "<image_id> <part_id> <x> <y> <visible>" (optional)
    parts/part_boxes.txt    "<image_id> <part_id> <x> <y> <w> <h>"   (optional, FG-Synth only)

All annotation files are read and cross-checked when the dataset is opened, and every image is
checked (:mod:`raccnn.data.verify`), so a broken download fails before training starts, with a
:class:`DatasetError` naming the culprit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .annotated import open_annotated
from .cache import ItemCache
from ..errors import DatasetError
from .images import load_rgb, pil_to_uint8
from .splits import choose_split
from .transforms import finalize, make_sample
from .verify import drop_unreadable, unreadable_message

REQUIRED_FILES = (
    "images.txt",
    "train_test_split.txt",
    "classes.txt",
    "image_class_labels.txt",
    "bounding_boxes.txt",
)


# ----------------------------------------------------------------------------- parsing
def read_table(path: Path, fmt: str, types: tuple, last_is_text: bool = False) -> list[tuple]:
    """Parse a whitespace-separated annotation file into typed tuples.

    ``fmt`` is the expected line shape, shown in error messages.  With ``last_is_text`` the
    last column takes the rest of the line (names containing spaces).
    """
    if not path.is_file():
        raise DatasetError(f"missing annotation file {path} (expected lines '{fmt}')")
    rows = []
    n = len(types)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                continue
            fields = text.split(maxsplit=n - 1) if last_is_text else text.split()
            try:
                if len(fields) != n:
                    raise ValueError(f"{len(fields)} fields instead of {n}")
                row = tuple(t(v) for t, v in zip(types, fields))
                for v in row:
                    if isinstance(v, float) and not math.isfinite(v):
                        raise ValueError("non-finite number")
            except ValueError as exc:
                raise DatasetError(
                    f"{path}, line {lineno}: malformed line {text!r} "
                    f"(expected '{fmt}': {exc})"
                ) from None
            rows.append(row)
    return rows


def _id_map(rows: list[tuple], path: Path, key_cols: int = 1) -> dict:
    """Rows keyed by their first ``key_cols`` columns; duplicate keys are an error."""
    out = {}
    for row in rows:
        key = row[0] if key_cols == 1 else row[:key_cols]
        if key in out:
            raise DatasetError(f"{path}: duplicate id {key}")
        out[key] = row[key_cols:]
    return out


def _check_contiguous(ids, path: Path, what: str) -> None:
    ids = sorted(ids)
    if ids != list(range(1, len(ids) + 1)):
        raise DatasetError(f"{path}: {what} ids must be 1..{len(ids)} without gaps, got {ids[:10]}...")


def _check_same_ids(ref: set, other: set, ref_path: Path, path: Path) -> None:
    if ref != other:
        missing = sorted(ref - other)[:5]
        extra = sorted(other - ref)[:5]
        raise DatasetError(
            f"image ids in {path} do not match {ref_path}: "
            f"missing {missing}{'...' if len(ref - other) > 5 else ''}, "
            f"unknown {extra}{'...' if len(other - ref) > 5 else ''}"
        )


def resolve_cub_dir(root: str | Path) -> Path:
    """Accept either the folder holding ``CUB_200_2011/`` or ``CUB_200_2011/`` itself."""
    root = Path(root)
    for cand in (root / "CUB_200_2011", root):
        if (cand / "images.txt").is_file():
            return cand
    raise DatasetError(
        f"expected CUB_200_2011/images.txt under {root}; download CUB-200-2011 "
        f"(CUB_200_2011.tgz) and extract it so that {root / 'CUB_200_2011' / 'images.txt'} and "
        f"{root / 'CUB_200_2011' / 'images'}/ exist, or generate FG-Synth with "
        f"tools/make_synthetic.py --out {root}"
    )


@dataclass
class Record:
    """Raw annotation of one image, in original image pixels."""

    image_id: int
    path: Path
    label: int                 # 0-based
    is_train: bool             # official split
    box_xywh: tuple            # x, y, w, h
    parts: np.ndarray          # [P, 3] x, y, visible
    part_boxes: np.ndarray     # [P, 4] x, y, w, h; NaN where unknown


def _line_of(path: Path, key: str) -> int:
    """The number of the first line of ``path`` whose fields start with ``key`` (for messages)."""
    fields = key.split()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.split()[:len(fields)] == fields:
                return lineno
    return 0


def _check_boxes_inside(d: Path, records: list["Record"], sizes: dict) -> None:
    """A box with no pixel inside its image is an annotation error (clamped, it would have zero area
    and still count in the IoU metric); ``sizes`` are the images' (width, height)."""
    for r in records:
        if r.path not in sizes:
            continue
        W, H = sizes[r.path]
        named = [("bounding_boxes.txt", str(r.image_id), "box", r.box_xywh)]
        named += [(f"parts/part_boxes.txt", f"{r.image_id} {k + 1}", f"part {k + 1} box", tuple(b))
                  for k, b in enumerate(r.part_boxes) if not np.isnan(b).any()]
        for file, key, what, (x, y, w, h) in named:
            if x >= W or y >= H or x + w <= 0 or y + h <= 0:
                path = d / file
                raise DatasetError(
                    f"{path}, line {_line_of(path, key)}: the {what} of image {r.image_id} (x {x:g}, y {y:g}, "
                    f"w {w:g}, h {h:g}) lies entirely outside the {W}x{H} image {r.path}")


# ----------------------------------------------------------------------------- dataset
class CUBDataset(torch.utils.data.Dataset):
    """CUB-200-2011-format dataset returning dicts (see :meth:`__getitem__`).

    ``transform`` is called on the tv_tensors sample dict described in
    :mod:`raccnn.data.transforms` (any ``torchvision.transforms.v2`` pipeline accepts it;
    :func:`~raccnn.data.transforms.build_transforms` builds the standard one).  ``None`` keeps
    the stored pixels. ``cache`` (``none``, ``decoded`` or
    ``samples``, :mod:`raccnn.data.cache`) keeps the split in memory from the moment it opens;
    ``samples`` fixes each item's transformed sample then, so it suits a deterministic transform only.
    """

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None,
                 val_fraction: float = 0.1, split_seed: int = 0, skip_unreadable: bool = False,
                 verify: str = "header", max_images: int = 0, cache: str = "none"):
        records, sizes, bad = open_annotated(self, resolve_cub_dir(root), split, transform, self._load_annotations,
                                             verify)
        _check_boxes_inside(self.root, records, sizes)
        if bad and not skip_unreadable:
            raise DatasetError(unreadable_message(bad, str(self.root / "images")))

        # official train -> train / val by a seeded stratified rule; official test untouched
        train_pool = [r for r in records if r.is_train]
        chosen = choose_split(split, train_pool, [r for r in records if not r.is_train], lambda r: r.label,
                              val_fraction, split_seed)
        chosen = drop_unreadable(chosen, bad, lambda r: r.path, split)
        if not chosen:
            raise DatasetError(
                f"split {split!r} of {self.root} is empty "
                f"(val_fraction={val_fraction}, {len(train_pool)} official train images, "
                f"{len(records) - len(train_pool)} official test images)"
            )
        self.records = chosen[:max_images] if max_images else chosen
        self.targets = [r.label for r in self.records]
        self.cache = ItemCache(cache, len(self.records), self._decode, self._build)  # data/cache.py

    # ------------------------------------------------------------------ annotations
    @staticmethod
    def _load_annotations(d: Path) -> tuple[list[Record], list[str], list[str]]:
        for name in REQUIRED_FILES:
            if not (d / name).is_file():
                raise DatasetError(f"missing annotation file {d / name} (CUB_200_2011 layout)")

        p_img, p_split, p_cls, p_lab, p_box = (d / n for n in REQUIRED_FILES)
        images = _id_map(read_table(p_img, "<image_id> <path>", (int, str), True), p_img)
        splits = _id_map(read_table(p_split, "<image_id> <0|1>", (int, int)), p_split)
        classes = _id_map(read_table(p_cls, "<class_id> <name>", (int, str), True), p_cls)
        labels = _id_map(read_table(p_lab, "<image_id> <class_id>", (int, int)), p_lab)
        boxes = _id_map(
            read_table(p_box, "<image_id> <x> <y> <w> <h>", (int, float, float, float, float)), p_box
        )
        if not images:
            raise DatasetError(f"{p_img} lists no images")
        _check_contiguous(classes, p_cls, "class")
        ids = set(images)
        for path, table in ((p_split, splits), (p_lab, labels), (p_box, boxes)):
            _check_same_ids(ids, set(table), p_img, path)
        for i, (flag,) in splits.items():
            if flag not in (0, 1):
                raise DatasetError(f"{p_split}: image {i} has split flag {flag}, expected 0 or 1")
        for i, (c,) in labels.items():
            if not 1 <= c <= len(classes):
                raise DatasetError(
                    f"{p_lab}: image {i} has class id {c}, out of range 1..{len(classes)} of {p_cls}"
                )
        for i, (x, y, w, h) in boxes.items():
            if w <= 0 or h <= 0:
                raise DatasetError(f"{p_box}: image {i} has a box with non-positive size {w}x{h}")

        # optional parts
        p_parts, p_locs, p_pbox = d / "parts" / "parts.txt", d / "parts" / "part_locs.txt", d / "parts" / "part_boxes.txt"
        part_names: list[str] = []
        locs: dict = {}
        pboxes: dict = {}
        if p_parts.is_file():
            parts = _id_map(read_table(p_parts, "<part_id> <name>", (int, str), True), p_parts)
            _check_contiguous(parts, p_parts, "part")
            part_names = [parts[k][0] for k in sorted(parts)]
            if p_locs.is_file():
                locs = _id_map(
                    read_table(p_locs, "<image_id> <part_id> <x> <y> <visible>", (int, int, float, float, int)),
                    p_locs, key_cols=2,
                )
            if p_pbox.is_file():
                pboxes = _id_map(
                    read_table(p_pbox, "<image_id> <part_id> <x> <y> <w> <h>", (int, int, float, float, float, float)),
                    p_pbox, key_cols=2,
                )
            for path, table in ((p_locs, locs), (p_pbox, pboxes)):
                for (i, k), vals in table.items():
                    if i not in ids:
                        raise DatasetError(f"{path}: unknown image id {i} (not in {p_img})")
                    if not 1 <= k <= len(part_names):
                        raise DatasetError(f"{path}: image {i} has part id {k}, out of range 1..{len(part_names)} of {p_parts}")
            for (i, k), (_, _, vis) in locs.items():
                if vis not in (0, 1):
                    raise DatasetError(f"{p_locs}: image {i} part {k} has visible flag {vis}, expected 0 or 1")
        elif p_locs.is_file() or p_pbox.is_file():
            raise DatasetError(f"missing {p_parts}: part annotations exist but part names do not")

        n_parts = len(part_names)
        records = []
        missing = []
        for i in sorted(images):
            path = d / "images" / images[i][0]
            if not path.is_file():
                missing.append(path)
                continue
            parts_arr = np.zeros((n_parts, 3), dtype=np.float32)
            pb = np.full((n_parts, 4), np.nan, dtype=np.float32)
            for k in range(n_parts):
                if (i, k + 1) in locs:
                    x, y, vis = locs[(i, k + 1)]
                    parts_arr[k] = (x, y, 1.0) if vis else (0.0, 0.0, 0.0)
                if (i, k + 1) in pboxes:
                    pb[k] = pboxes[(i, k + 1)]
            records.append(
                Record(
                    image_id=i,
                    path=path,
                    label=labels[i][0] - 1,
                    is_train=splits[i][0] == 1,
                    box_xywh=boxes[i],
                    parts=parts_arr,
                    part_boxes=pb,
                )
            )
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DatasetError(f"image listed in {p_img} but missing on disk: {missing[0]}{more}")
        class_names = [classes[k][0] for k in sorted(classes)]
        return records, class_names, part_names

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.records)

    def annotation(self, index: int) -> dict:
        """Raw annotation of item ``index`` in original pixels, without decoding the image."""
        r = self.records[index]
        return {
            "image_id": r.image_id,
            "path": str(r.path),
            "label": r.label,
            "box_xywh": tuple(r.box_xywh),
            "parts": r.parts.copy(),            # [P, 3] x, y, visible
            "part_boxes_xywh": r.part_boxes.copy(),  # [P, 4], NaN where unknown
        }

    def __getitem__(self, index: int) -> dict:
        """``image`` [3,H,W] uint8 from the standard transforms (``to_model_input`` makes the model's
        input of a batch); ``label``, ``index`` int64; ``box`` [4] XYXY;
        ``parts`` [P,3] (x, y, visible); ``part_boxes`` [P,4] XYXY (NaN where unknown).
        Coordinates are in the pixels of the returned (transformed) image."""
        return self.cache[index]

    def _decode(self, index: int) -> torch.Tensor:
        # stored orientation: bounding_boxes.txt and part_locs.txt give stored pixels (data/images.py)
        return pil_to_uint8(load_rgb(self.records[index].path, exif_transpose=False))

    def _build(self, index: int, image: torch.Tensor) -> dict:
        r = self.records[index]
        x, y, w, h = r.box_xywh
        pb = torch.from_numpy(r.part_boxes.copy())
        pb[:, 2:] += pb[:, :2]  # xywh -> xyxy
        parts = torch.from_numpy(r.parts)
        sample = make_sample(
            image, (x, y, x + w, y + h), parts[:, :2], parts[:, 2] > 0, pb, self.flip_perm
        )
        out = finalize(self.transform(sample))
        out["label"] = torch.tensor(r.label, dtype=torch.int64)
        out["index"] = torch.tensor(index, dtype=torch.int64)
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"n={len(self)}, classes={self.num_classes}, parts={len(self.part_names)})"
        )
