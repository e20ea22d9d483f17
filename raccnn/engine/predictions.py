"""Per-image predictions: one CSV row per evaluated image, beside the metrics file.

``prediction_rows`` turns ``collect_outputs``' result into rows with these columns (h runs over the
heads of ``Outputs.heads``: scale1, ..., fused12, fused123, ...; s over the scales >= 2):

    image                the image's file, relative to the dataset folder (``image_names``)
    label, label_name    the true class: index and name
    {h}_pred, {h}_pred_name   the head's prediction (argmax of its logits): index and name
    {h}_prob             softmax probability of that prediction
    {h}_prob_label       softmax probability of the true class
    scale{s}_tx, scale{s}_ty, scale{s}_tl   the scale-s square in normalised coordinates of the full
                         input image (``Outputs.abs_boxes``; evaluate.py's module docstring)

so that a reader can sort the test images by confidence, find those one head gets wrong and
another right, or open the square a wrong prediction looked at.
"""
from __future__ import annotations

import csv
import os
from typing import Sequence


from ..fileio import atomic_open
from .outputs import Outputs


def image_names(dataset, indices: Sequence[int], root: str | os.PathLike | None = None) -> list[str]:
    """Per dataset index, the image's path (``dataset.annotation(i)["path"]``) relative to ``root``
    (default: ``dataset.root``), or as stored when it lies outside that folder; the index itself
    for a dataset without annotations."""
    annotation = getattr(dataset, "annotation", None)
    root = root if root is not None else getattr(dataset, "root", None)
    base = os.path.abspath(root) if root is not None else None
    names = []
    for i in indices:
        path = annotation(int(i)).get("path") if annotation is not None else None
        if path is None:
            names.append(str(int(i)))
            continue
        full = os.path.abspath(path)
        inside = base is not None and os.path.commonpath([base, full]) == base
        names.append(os.path.relpath(full, base) if inside else os.fspath(path))
    return names


def prediction_fields(outputs: Outputs) -> list[str]:
    """The CSV's columns for these outputs, in order (module docstring)."""
    fields = ["image", "label", "label_name"]
    for head in outputs.heads():
        fields += [f"{head}_pred", f"{head}_pred_name", f"{head}_prob", f"{head}_prob_label"]
    for s in outputs.box_scales():
        fields += [f"scale{s}_tx", f"scale{s}_ty", f"scale{s}_tl"]
    return fields


def prediction_rows(outputs: Outputs, class_names: Sequence[str], images: Sequence[str]) -> list[dict]:
    """One dict per image of ``outputs`` (keys ``prediction_fields``); ``images[i]`` names row i."""
    labels = outputs.label.long()
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} image names for {len(labels)} images")
    rows = [{"image": name, "label": int(y), "label_name": class_names[int(y)]} for name, y in zip(images, labels)]
    for head, logits in outputs.heads().items():
        probs = logits.double().softmax(dim=1)
        pred = probs.argmax(1)
        p_pred = probs.gather(1, pred[:, None])[:, 0]
        p_label = probs.gather(1, labels[:, None])[:, 0]
        for row, k, pp, pl in zip(rows, pred.tolist(), p_pred.tolist(), p_label.tolist()):
            row.update({f"{head}_pred": k, f"{head}_pred_name": class_names[k], f"{head}_prob": pp,
                        f"{head}_prob_label": pl})
    for s, boxes in zip(outputs.box_scales(), outputs.abs_boxes):
        for row, (tx, ty, tl) in zip(rows, boxes.double().tolist()):
            row.update({f"scale{s}_tx": tx, f"scale{s}_ty": ty, f"scale{s}_tl": tl})
    return rows


def write_predictions(outputs: Outputs, class_names: Sequence[str], images: Sequence[str],
                      path: str | os.PathLike) -> None:
    """Write ``prediction_rows`` as CSV so that ``path`` never holds a half-written file."""
    rows = prediction_rows(outputs, list(class_names), list(images))
    with atomic_open(os.fspath(path), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=prediction_fields(outputs))
        writer.writeheader()
        writer.writerows(rows)
