"""Square geometry shared by the model, the proposers, the metrics and the pictures.

A square is (tx, ty, tl): centre and half side in normalised coordinates of the view it lives in
(x rightwards, y downwards, both in [0, 1]); it covers [tx - tl, tx + tl] x [ty - tl, ty + tl].
"""
from __future__ import annotations

import torch
from torch import Tensor


def full_image_boxes(batch: int, device=None, dtype=torch.float32) -> Tensor:
    """The square that is the whole view, [batch, 3]."""
    return torch.tensor([[0.5, 0.5, 0.5]], device=device, dtype=dtype).expand(batch, 3)


def compose_boxes(parent: Tensor, child: Tensor) -> Tensor:
    """Express ``child`` (relative to the ``parent`` square's view) in the parent's own coordinates."""
    side = 2 * parent[:, 2:3]
    origin = parent[:, :2] - parent[:, 2:3]
    return torch.cat((origin + child[:, :2] * side, child[:, 2:3] * side), dim=1)


def clamp_squares(boxes: Tensor, tl_min: float, tl_max: float, keep_inside: bool = True) -> Tensor:
    """Clip (tx, ty, tl) into the bounds (and the view); used for hand-made squares."""
    tl = boxes[:, 2].clamp(tl_min, tl_max)
    lo, hi = (tl, 1 - tl) if keep_inside else (torch.zeros_like(tl), torch.ones_like(tl))
    tx = torch.minimum(torch.maximum(boxes[:, 0], lo), hi)
    ty = torch.minimum(torch.maximum(boxes[:, 1], lo), hi)
    return torch.stack((tx, ty, tl), dim=1)


def square_to_xyxy(boxes: Tensor, height: int, width: int) -> Tensor:
    """Squares [N, 3] -> [N, 4] pixel xyxy in a height x width image (dtype kept, at least fp32)."""
    tx, ty, tl = boxes.detach().unbind(-1)
    return torch.stack(((tx - tl) * width, (ty - tl) * height, (tx + tl) * width, (ty + tl) * height), dim=-1)


def part_squares(part_boxes: Tensor, part: int, height: int, width: int, margin: float = 1.1) -> Tensor:
    """Squares around one part's xyxy pixel box [B, P, 4]: centred on it, half side =
    margin * max(w / W, h / H) / 2; an unknown (NaN) part box gives the whole image."""
    box = part_boxes[:, part].float()
    cx, cy = (box[:, 0] + box[:, 2]) / 2 / width, (box[:, 1] + box[:, 3]) / 2 / height
    half = margin * torch.maximum((box[:, 2] - box[:, 0]) / width, (box[:, 3] - box[:, 1]) / height) / 2
    squares = torch.stack((cx, cy, half), dim=1)
    return torch.where(torch.isfinite(squares), squares, full_image_boxes(len(box), box.device, box.dtype))
