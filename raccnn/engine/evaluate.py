"""Metrics: accuracy and localisation from a model's collected outputs.

``raccnn.engine.inference.collect_outputs`` gathers a model's outputs on the CPU (``outputs.Outputs``);
``compute_metrics`` turns them into a dict of plain Python values (JSON-serialisable) with these keys (s runs over the scales, n = number of scales):

    num_images, num_classes, heads
    acc_scale{s} (s = 1..n), acc_fused{name} (name = "12", "123", ...)   top-1 accuracy in [0, 1]
    top5_k             min(5, number of classes): with fewer than 5 classes top-5 is top-K, always 1
    top5_acc_{head}    top-5 accuracy: the true class among the head's 5 highest logits (ties go to
                       the lower class index, as for top-1)
    mean_class_acc_{head}  mean over the classes that have images of their per-class accuracy
                       (recall), so that every class weighs the same however many images it has
    per_class_acc      {head: {class name: accuracy or None if the class has no images}}
    confusion_matrix   {head: K x K list of lists, rows = true class, columns = predicted}
    hit_parts          part names whose centre defines a part hit ([] without part annotations)
    part_hit_count     images with at least one of those parts visible (the denominator)
    part_hit_scale{s}  (s = 2..n) fraction of them whose scale-s square contains that centre
    part_offset_scale{s}  (s = 2..n) median over those images of max(|cx - tx|, |cy - ty|), the
                       distance from the scale-s square's centre to that centre (x in widths, y in
                       heights): a part hit is an offset of at most tl, so the offset says whether
                       the square aims at the part, whatever its size
    peak_hit_scale{s}  (s = 2..n) the same for the scale-s square moved onto the strongest response of
                       scale s-1's last conv (``inference.peak_boxes``; where init_apn aims): whether
                       that response sits on the part (present when collect_outputs recorded them)
    iou_object_count   images with a finite object box (the denominator)
    iou_object_scale{s} (s = 2..n) mean IoU of the scale-s square with the object box
    paired_fused{all}  {scale{s}: {head_only, scale_only, p_value}}: the fused head over all scales
                       against each scale on the same images: images right only by the fused head,
                       only by the scale, and the exact McNemar p-value (``stats.mcnemar_exact``)
    abs_box_stats_scale{s}  box_stats of the scale-s square in input-image coordinates
    rel_box_stats_scale{s}  box_stats of the APN's own output (relative to scale s-1's view),
                            against the APN's tl bounds (present when collect_outputs recorded them)

Head names are "scale1", ..., "scale{n}", "fused12", "fused123", ...; rates whose denominator is
zero are None.

Geometry: a square (tx, ty, tl) covers [tx - tl, tx + tl] x [ty - tl, ty + tl] in normalised image
coordinates (x rightwards, y downwards, both in [0, 1]). Parts and object boxes are in input-pixel
coordinates where pixel (r, c) has its centre at (c + 0.5, r + 0.5), so x / W and y / H convert them
to the same normalised frame, and the square is x1 = (tx - tl) W, ..., y2 = (ty + tl) H in pixels.
A centre exactly on the square's border counts as inside.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix
from torch import Tensor

from ..fileio import atomic_open
from ..models.boxes import square_to_xyxy
from ..stats import mcnemar_exact
from .outputs import Outputs

# CUB-200-2011 part names (parts/parts.txt) that lie on the bird's head: the part-hit metric of
# the scale-2 and scale-3 squares uses the centre of those that are visible.
CUB_HEAD_PARTS = ("beak", "crown", "forehead", "left eye", "right eye", "nape", "throat")
TOP_K = 5  # the k of top-k accuracy (the paper's tables report top-1; ImageNet-style tables add top-5)


# --------------------------------------------------------------------------------------------
# Metrics


def _stat(x: Tensor, fn) -> float | None:
    return float(fn(x)) if len(x) else None


def box_stats(boxes: Tensor, tl_min: float | None = None, tl_max: float | None = None,
              tol: float = 0.01) -> dict[str, Any]:
    """Mean and std of tx, ty, tl of ``boxes`` [N, 3], and the fractions of tl near its bounds.

    ``frac_at_min`` is the fraction with tl <= tl_min + tol, ``frac_at_max`` the fraction with
    tl >= tl_max - tol. Pass the APN's bounds to detect a collapse onto one of them; without them
    the smallest and largest observed tl are used. Stds are population stds (0 for one box).
    """
    boxes = torch.as_tensor(boxes).detach().double().cpu().reshape(-1, 3)
    tl = boxes[:, 2]
    if tl_min is None:
        tl_min = _stat(tl, torch.min)
    if tl_max is None:
        tl_max = _stat(tl, torch.max)
    stats: dict[str, Any] = {"n": len(boxes)}
    for j, name in enumerate(("tx", "ty", "tl")):
        stats[f"{name}_mean"] = _stat(boxes[:, j], torch.mean)
        stats[f"{name}_std"] = _stat(boxes[:, j], lambda v: v.std(unbiased=False))
    stats["tl_min"] = None if tl_min is None else float(tl_min)
    stats["tl_max"] = None if tl_max is None else float(tl_max)
    stats["frac_at_min"] = _stat(tl, lambda v: (v <= tl_min + tol).double().mean())
    stats["frac_at_max"] = _stat(tl, lambda v: (v >= tl_max - tol).double().mean())
    return stats


def default_hit_parts(part_names: list[str]) -> list[str]:
    """The CUB head parts the dataset has; all parts if it has none of them."""
    head = [name for name in CUB_HEAD_PARTS if name in part_names]
    return head if head else list(part_names)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise IoU of two [N, 4] xyxy box tensors."""
    a, b = a.double(), b.double()
    w = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp_min(0)
    h = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp_min(0)
    inter = w * h
    area = lambda x: (x[:, 2] - x[:, 0]).clamp_min(0) * (x[:, 3] - x[:, 1]).clamp_min(0)
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))


def _hit_centres(parts: Tensor, part_names: list[str], hit_parts: list[str]) -> tuple[Tensor, Tensor]:
    """Mean (x, y) of the visible hit parts per image [N, 2] (pixels) and which images have one [N]."""
    idx = [part_names.index(name) for name in hit_parts]
    sel = parts[:, idx].double()  # [N, h, 3]
    visible = sel[..., 2] > 0.5
    count = visible.sum(1)
    total = (sel[..., :2] * visible[..., None]).sum(1)
    has = count > 0
    return total / count.clamp_min(1)[:, None], has


def hit_centres(outputs: Outputs, part_names, hit_parts=None) -> tuple[list[str], Tensor, Tensor]:
    """(the hit parts used, which images have one of them visible [N] bool, the mean centre of their
    visible hit parts [M, 2] as fractions of the image's width and height). ``hit_parts`` empty or None:
    ``default_hit_parts``. Without part annotations: ([], all False, an empty [0, 2])."""
    part_names, parts = list(part_names or []), outputs.parts
    n = len(outputs.label)
    if not part_names or parts is None or parts.numel() == 0:
        return [], torch.zeros(n, dtype=torch.bool), torch.zeros(0, 2, dtype=torch.float64)
    if tuple(parts.shape[1:]) != (len(part_names), 3):
        raise ValueError(f"parts have shape {tuple(parts.shape)}, expected [N, {len(part_names)}, 3] for {part_names}")
    hit_parts = list(hit_parts) if hit_parts else default_hit_parts(part_names)
    unknown = [name for name in hit_parts if name not in part_names]
    if unknown:
        raise ValueError(f"hit_parts {unknown} are not among the dataset's parts {part_names}")
    centres, has = _hit_centres(parts, part_names, hit_parts)
    height, width = (int(v) for v in outputs.image_size)
    return hit_parts, has, centres[has] / torch.tensor([width, height], dtype=torch.float64)


def square_offsets(boxes: Tensor, has: Tensor, centres: Tensor) -> Tensor:
    """max(|cx - tx|, |cy - ty|) of each ``hit_centres`` centre from its image's square (``boxes``
    [N, 3] in input-image fractions, rows ``has``): the centre is inside the square iff this is at most tl."""
    tx, ty, _ = boxes[has].double().unbind(1)
    return torch.maximum((centres[:, 0] - tx).abs(), (centres[:, 1] - ty).abs())


def part_hit_rate(boxes: Tensor, has: Tensor, centres: Tensor) -> float | None:
    """The fraction of images with a visible hit part whose square contains its centre (None: no such image)."""
    if not bool(has.any()):
        return None
    return float((square_offsets(boxes, has, centres) <= boxes[has, 2].double()).double().mean())


def head_accuracies(outputs: Outputs) -> dict[str, float | None]:
    """Top-1 accuracy of every head: {"scale1": ..., "fused12": ..., ...} (None without images)."""
    labels = outputs.label.long().numpy()
    return {head: float(accuracy_score(labels, logits.argmax(1).numpy())) if len(labels) else None
            for head, logits in outputs.heads().items()}


def accuracies(outputs: Outputs) -> dict[str, float | None]:
    """``head_accuracies`` under the metrics' keys: {"acc_scale1": ..., "acc_fused12": ..., ...}."""
    return {f"acc_{head}": acc for head, acc in head_accuracies(outputs).items()}


def top_k_accuracy(logits: Tensor, labels: Tensor, k: int) -> float | None:
    """Fraction of images whose label is among the ``k`` highest of their logits [N, K] (None
    without images). Ties are ranked by class index, lower first, as ``argmax`` does for top-1, so
    top-k is never below top-1."""
    if not len(labels):
        return None
    ranked = torch.argsort(-logits.float(), dim=1, stable=True)[:, :k]
    return float((ranked == labels.long()[:, None]).any(1).double().mean())


def _accuracy_metrics(outputs: Outputs, class_names, labels) -> dict[str, Any]:
    k = len(class_names)
    top = min(TOP_K, k)
    metrics: dict[str, Any] = {"top5_k": top, "per_class_acc": {}, "confusion_matrix": {}, **accuracies(outputs)}
    for head, logits in outputs.heads().items():
        pred = logits.argmax(1).numpy()
        cm = confusion_matrix(labels, pred, labels=list(range(k)))
        support = cm.sum(1)
        per_class = {name: (float(cm[i, i] / support[i]) if support[i] else None) for i, name in enumerate(class_names)}
        present = [v for v in per_class.values() if v is not None]
        metrics[f"top5_acc_{head}"] = top_k_accuracy(logits, torch.as_tensor(labels), top)
        metrics[f"mean_class_acc_{head}"] = float(np.mean(present)) if present else None
        metrics["per_class_acc"][head] = per_class
        metrics["confusion_matrix"][head] = cm.tolist()
    return metrics


def paired_with_scales(outputs: Outputs, head: str, labels) -> dict[str, dict]:
    """``head`` against every single scale on the same images: how many images only ``head`` gets
    right, how many only the scale, and the exact McNemar p-value of the difference."""
    right = {h: logits.argmax(1).numpy() == labels
             for h, logits in outputs.heads().items() if h == head or h.startswith("scale")}
    paired = {}
    for scale in (h for h in right if h.startswith("scale")):
        only_head = int((right[head] & ~right[scale]).sum())
        only_scale = int((~right[head] & right[scale]).sum())
        paired[scale] = {"head_only": only_head, "scale_only": only_scale,
                         "p_value": mcnemar_exact(only_head, only_scale)}
    return paired


def compute_metrics(outputs: Outputs, class_names: list[str], part_names: list[str] | None = None,
                    hit_parts: list[str] | None = None) -> dict[str, Any]:
    """Accuracy, per-class accuracy, confusion matrices and localisation metrics (module docstring).

    ``hit_parts`` names the parts whose visible centre the squares should contain; empty or None
    means ``default_hit_parts(part_names)`` (the CUB head parts). Names not in ``part_names`` are
    an error when the dataset has part annotations.
    """
    labels = outputs.label.long().numpy()
    heads = list(outputs.heads())
    metrics: dict[str, Any] = {"num_images": int(len(labels)), "num_classes": len(class_names), "heads": heads}
    metrics.update(_accuracy_metrics(outputs, list(class_names), labels))
    fused = [head for head in heads if head.startswith("fused")]
    if fused and len(labels):
        metrics[f"paired_{fused[-1]}"] = paired_with_scales(outputs, fused[-1], labels)

    height, width = (int(v) for v in outputs.image_size)

    # Part hit: does the scale-s square contain the centre of the visible hit parts?
    hit_parts, has, centres = hit_centres(outputs, part_names, hit_parts)
    n_hit = int(has.sum())
    metrics["hit_parts"] = hit_parts
    metrics["part_hit_count"] = n_hit
    for i, s in enumerate(outputs.box_scales()):
        for kind, squares in (("part", outputs.abs_boxes), ("peak", outputs.peak_boxes)):
            if i >= len(squares):
                continue
            boxes, rate, offset = squares[i], None, None
            if n_hit:
                rate = part_hit_rate(boxes, has, centres)
                offset = float(np.median(square_offsets(boxes, has, centres).numpy())) if kind == "part" else None
            metrics[f"{kind}_hit_scale{s}"] = rate
            if kind == "part":
                metrics[f"part_offset_scale{s}"] = offset

    # IoU of the scale-s square with the object box.
    obj = outputs.box
    finite = torch.isfinite(obj).all(1) if obj is not None else torch.zeros(len(labels), dtype=torch.bool)
    metrics["iou_object_count"] = int(finite.sum())
    for s, boxes in zip(outputs.box_scales(), outputs.abs_boxes):
        rate = None
        if finite.any():
            square = square_to_xyxy(boxes[finite].double(), height, width)
            rate = float(box_iou(square, obj[finite]).mean())
        metrics[f"iou_object_scale{s}"] = rate

    # Box statistics per APN.
    bounds = outputs.tl_bounds
    for i, s in enumerate(outputs.box_scales()):
        metrics[f"abs_box_stats_scale{s}"] = box_stats(outputs.abs_boxes[i])
        if i < len(outputs.rel_boxes):
            lo, hi = (float(v) for v in bounds[i]) if bounds is not None else (None, None)
            metrics[f"rel_box_stats_scale{s}"] = box_stats(outputs.rel_boxes[i], lo, hi)
    return metrics


# --------------------------------------------------------------------------------------------
# Reporting


def head_label(head: str) -> str:
    """Display name of a head: "scale2" -> "scale 2", "fused123" -> "fused 1+2+3"."""
    if head.startswith("scale"):
        return f"scale {head[len('scale'):]}"
    return "fused " + "+".join(head[len("fused"):])


def format_table(metrics: Mapping[str, Any]) -> str:
    """Markdown table of top-1, top-5 and mean per-class accuracy per head, then the part-hit and
    IoU lines when present (a metrics file written before a column existed shows n/a there)."""
    heads = metrics.get("heads") or [k[len("acc_"):] for k in metrics if k.startswith("acc_")]
    top = metrics.get("top5_k", TOP_K)
    lines = [f"| head | top-1 accuracy (%) | top-{top} accuracy (%) | mean per-class accuracy (%) |", "|---|---:|---:|---:|"]

    def pct(key: str) -> str:
        value = metrics.get(key)
        return "n/a" if value is None else f"{100 * value:.2f}"

    for head in heads:
        lines.append(f"| {head_label(head)} | {pct(f'acc_{head}')} | {pct(f'top5_acc_{head}')} "
                     f"| {pct(f'mean_class_acc_{head}')} |")
    lines.append("")
    lines.append(f"{metrics.get('num_images', 0)} images"
                 + (f", {metrics['num_classes']} classes" if "num_classes" in metrics else "")
                 + (f" (fewer than {TOP_K}: top-{top} counts every image)" if top < TOP_K else "") + ".")

    def scale_values(prefix: str, fmt) -> list[str]:
        keys = sorted((k for k in metrics if k.startswith(prefix) and metrics[k] is not None),
                      key=lambda k: int(k[len(prefix):]))
        return [f"scale {k[len(prefix):]} {fmt(metrics[k])}" for k in keys]

    hits = scale_values("part_hit_scale", lambda v: f"{100 * v:.2f}%")
    if hits:
        parts = ", ".join(metrics.get("hit_parts") or [])
        lines.append(f"Part hit (centre of visible {parts}; {metrics['part_hit_count']} images): "
                     + ", ".join(hits) + ".")
    peaks = scale_values("peak_hit_scale", lambda v: f"{100 * v:.2f}%")
    if peaks:
        lines.append("Part hit of the squares moved onto the strongest last-conv response of the scale before: "
                     + ", ".join(peaks) + ".")
    for key in (k for k in metrics if k.startswith("paired_")):
        pairs = ", ".join(f"{head_label(scale)} +{v['head_only']} / -{v['scale_only']} (p = {v['p_value']:.3f})"
                          for scale, v in metrics[key].items())
        lines.append(f"{head_label(key[len('paired_'):])} against each scale, images right only by the fused head "
                     f"/ only by the scale (exact McNemar p): {pairs}.")
    ious = scale_values("iou_object_scale", lambda v: f"{v:.3f}")
    if ious:
        lines.append(f"Mean IoU with the object box ({metrics['iou_object_count']} images): " + ", ".join(ious) + ".")
    if metrics.get("selection"):
        lines.append(f"Model kept: {metrics['selection']}.")
    return "\n".join(lines) + "\n"


def to_jsonable(value: Any) -> Any:
    """Plain Python copy of ``value``: tensors and arrays to lists, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (Tensor, np.ndarray)):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(metrics: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``metrics`` as JSON (indent 2) so that ``path`` never holds a half-written file."""
    path = os.fspath(path)
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(to_jsonable(metrics), f, indent=2, allow_nan=False)
        f.write("\n")
