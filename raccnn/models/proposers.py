"""Non-learned proposers of the square a scale zooms into, to measure what the learned APN is worth.

Each maps scale s's last-conv features [B, C, h, w] to boxes (tx, ty, tl) relative to scale s's view,
within the same bounds as the APN (tl in [tl_min, tl_max], square inside the view if keep_inside):

- ``center``:  the centred square of half side ``tl`` (a fixed zoom);
- ``heatmap``: AG-CNN's crop: heat = max over channels of |activation|, scaled to [0, 1] per image,
               thresholded at ``threshold``; the square around the bounding box of the largest
               connected component (no learning, no gradient);
- ``oracle``:  the ground-truth part box, given to the forward pass (an upper bound; the deeper
               scales then keep the oracle's view, tl = 0.5).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn

PROPOSERS = ("apn", "center", "heatmap", "oracle")


def clamp_squares(boxes: Tensor, tl_min: float, tl_max: float, keep_inside: bool = True) -> Tensor:
    """Clip (tx, ty, tl) into the bounds (and the view); used for hand-made squares."""
    tl = boxes[:, 2].clamp(tl_min, tl_max)
    lo, hi = (tl, 1 - tl) if keep_inside else (torch.zeros_like(tl), torch.ones_like(tl))
    tx = torch.minimum(torch.maximum(boxes[:, 0], lo), hi)
    ty = torch.minimum(torch.maximum(boxes[:, 1], lo), hi)
    return torch.stack((tx, ty, tl), dim=1)


class FixedBounds(nn.Module):
    """Shared bound handling of the non-learned proposers."""

    def __init__(self, tl_min: float = 0.1, tl_max: float = 0.5, keep_inside: bool = True, **_unused):
        super().__init__()
        self.tl_min, self.tl_max, self.keep_inside = float(tl_min), float(tl_max), bool(keep_inside)

    def clamp(self, boxes: Tensor) -> Tensor:
        return clamp_squares(boxes, self.tl_min, self.tl_max, self.keep_inside)


class CenterProposer(FixedBounds):
    def __init__(self, tl: float = 0.25, **bounds):
        super().__init__(**bounds)
        self.tl = float(tl)

    def forward(self, feats: Tensor) -> Tensor:
        box = feats.new_tensor([[0.5, 0.5, self.tl]]).expand(len(feats), 3)
        return self.clamp(box.float())


class HeatmapProposer(FixedBounds):
    def __init__(self, threshold: float = 0.7, **bounds):
        super().__init__(**bounds)
        self.threshold = float(threshold)

    @torch.no_grad()
    def forward(self, feats: Tensor) -> Tensor:
        heat = feats.detach().abs().amax(dim=1).float()  # [B, h, w]
        lo = heat.flatten(1).amin(1)[:, None, None]
        hi = heat.flatten(1).amax(1)[:, None, None]
        masks = ((heat - lo) / (hi - lo).clamp_min(1e-12) >= self.threshold).cpu().numpy()
        h, w = masks.shape[1:]
        boxes = []
        # Connected components per image: scipy.ndimage.label does this well on CPU, and the maps
        # are tiny (feature resolution), so the loop over the batch costs microseconds.
        for mask in masks:
            labels, count = ndimage.label(mask)
            sizes = np.bincount(labels.ravel())[1:] if count else np.array([])
            if count == 0:
                boxes.append((0.5, 0.5, 0.5))
                continue
            rows, cols = np.nonzero(labels == 1 + int(sizes.argmax()))
            x0, x1 = cols.min() / w, (cols.max() + 1) / w
            y0, y1 = rows.min() / h, (rows.max() + 1) / h
            boxes.append(((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2))
        return self.clamp(torch.tensor(boxes, dtype=torch.float32, device=feats.device))


class OracleProposer(FixedBounds):
    """Needs the squares from outside (``RACNN.forward(..., part_boxes=...)``)."""

    def forward(self, feats: Tensor) -> Tensor:
        raise RuntimeError("the oracle proposer needs ground-truth part boxes: pass part_boxes to the forward")


def part_squares(part_boxes: Tensor, part: int, height: int, width: int, margin: float = 1.1) -> Tensor:
    """Squares (tx, ty, tl) in normalised coordinates around one part's xyxy pixel box.

    Half side = margin * max(w, h) / 2 over the larger image side; NaN boxes give the whole image."""
    box = part_boxes[:, part].float()
    cx, cy = (box[:, 0] + box[:, 2]) / 2 / width, (box[:, 1] + box[:, 3]) / 2 / height
    half = margin * torch.maximum((box[:, 2] - box[:, 0]) / width, (box[:, 3] - box[:, 1]) / height) / 2
    squares = torch.stack((cx, cy, half), dim=1)
    return torch.where(torch.isfinite(squares), squares, squares.new_tensor([0.5, 0.5, 0.5]))
