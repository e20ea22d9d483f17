"""What proposes the square each scale zooms into: the learned APN, or a fixed rule that measures
what the APN is worth. ``PROPOSERS`` is the one name -> class map.

Each maps scale s's last-conv features [B, C, h, w] to boxes (tx, ty, tl) relative to scale s's view,
within the same bounds as the APN (tl in [tl_min, tl_max], square inside the view if keep_inside):

- ``apn``:     the attention proposal network (``apn.py``);
- ``center``:  the centred square of half side ``tl`` (a fixed zoom);
- ``heatmap``: AG-CNN's crop: heat = max over channels of |activation|, scaled to [0, 1] per image,
               thresholded at ``threshold``; the square around the bounding box of the largest
               connected component (no learning, no gradient);
- ``oracle``:  the ground-truth part box, given to the forward pass (an upper bound; the deeper
               scales then keep the oracle's view, tl = 0.5).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn

from ..errors import ConfigError
from .apn import APN, TL_MAX, TL_MIN
from .boxes import clamp_squares, full_image_boxes, part_squares


class FixedBounds(nn.Module):
    """Bound handling of the non-learned proposers (they take ``in_channels`` for a uniform signature)."""

    def __init__(self, in_channels: int = 0, tl_min: float = TL_MIN, tl_max: float = TL_MAX, keep_inside: bool = True):
        super().__init__()
        self.tl_min, self.tl_max, self.keep_inside = float(tl_min), float(tl_max), bool(keep_inside)

    def clamp(self, boxes: Tensor) -> Tensor:
        return clamp_squares(boxes, self.tl_min, self.tl_max, self.keep_inside)


class CenterProposer(FixedBounds):
    def __init__(self, in_channels: int = 0, tl: float = 0.25, **bounds):
        super().__init__(in_channels, **bounds)
        self.tl = float(tl)

    def forward(self, feats: Tensor) -> Tensor:
        box = feats.new_tensor([[0.5, 0.5, self.tl]]).expand(len(feats), 3)
        return self.clamp(box.float())


class HeatmapProposer(FixedBounds):
    def __init__(self, in_channels: int = 0, threshold: float = 0.7, **bounds):
        super().__init__(in_channels, **bounds)
        self.threshold = float(threshold)

    @torch.no_grad()
    def forward(self, feats: Tensor) -> Tensor:
        heat = feats.detach().abs().amax(dim=1).float()  # [B, h, w]
        lo = heat.flatten(1).amin(1)[:, None, None]
        hi = heat.flatten(1).amax(1)[:, None, None]
        masks = ((heat - lo) / (hi - lo).clamp_min(1e-12) >= self.threshold).cpu().numpy()
        h, w = masks.shape[1:]
        boxes = full_image_boxes(len(masks)).contiguous()
        # Connected components per image: scipy.ndimage.label does this well on CPU, and the maps
        # are tiny (feature resolution), so the loop over the batch costs microseconds.
        for b, mask in enumerate(masks):
            labels, count = ndimage.label(mask)
            if count == 0:
                continue
            sizes = np.bincount(labels.ravel())[1:]
            rows, cols = np.nonzero(labels == 1 + int(sizes.argmax()))
            x0, x1 = cols.min() / w, (cols.max() + 1) / w
            y0, y1 = rows.min() / h, (rows.max() + 1) / h
            boxes[b] = torch.tensor(((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2))
        return self.clamp(boxes.to(feats.device))


class OracleProposer(FixedBounds):
    """The square around part ``part`` of the ground-truth part boxes (``RACNN.forward(...,
    part_boxes=...)``), ``margin`` x the part box's side; deeper scales keep their whole view."""

    def __init__(self, in_channels: int = 0, margin: float = 1.1, part: int | None = None, **bounds):
        super().__init__(in_channels, **bounds)
        self.margin, self.part = float(margin), part

    def squares(self, part_boxes: Tensor | None, height: int, width: int, first: bool) -> Tensor:
        if part_boxes is None or self.part is None:
            raise RuntimeError("the oracle proposer needs part_boxes and a part index (a dataset with part boxes)")
        if not first:
            return self.clamp(full_image_boxes(len(part_boxes), part_boxes.device))
        return self.clamp(part_squares(part_boxes, self.part, height, width, self.margin))

    def forward(self, feats: Tensor) -> Tensor:
        raise RuntimeError("the oracle proposer needs ground-truth part boxes: pass part_boxes to the forward")


PROPOSERS: dict[str, type[nn.Module]] = {
    "apn": APN,
    "center": CenterProposer,
    "heatmap": HeatmapProposer,
    "oracle": OracleProposer,
}
# model.proposer_cfg key -> (proposer, its constructor argument, smallest and largest valid value)
PROPOSER_OPTIONS = {
    "center_tl": ("center", "tl", 0.0, 0.5),  # half side of the centred square
    "heatmap_threshold": ("heatmap", "threshold", 0.0, 1.0),  # on the heat map scaled to [0, 1]
    "oracle_margin": ("oracle", "margin", 0.5, None),  # square side = margin x the part box's side
}


def part_index(part_names: Sequence[str], hit_parts: Sequence[str] | None) -> int | None:
    """Index of the first of ``hit_parts`` among ``part_names`` (None if absent): the oracle's part."""
    for name in hit_parts or ():
        if name in part_names:
            return list(part_names).index(name)
    return None


def check_part_settings(cfg: dict, part_names: Sequence[str]) -> None:
    """ConfigError unless ``data.hit_parts`` names parts of the dataset (when it has parts) and the
    oracle proposer finds its part among them: caught before training, not at the first validation."""
    hit_parts = cfg["data"]["hit_parts"]
    unknown = [name for name in hit_parts if name not in part_names]
    if part_names and unknown:
        raise ConfigError(f"data.hit_parts: {unknown} are not parts of the dataset (parts: {list(part_names)})")
    if cfg["model"]["proposer"] == "oracle" and part_index(part_names, hit_parts) is None:
        raise ConfigError(f"model.proposer: 'oracle' needs data.hit_parts to name a part of the dataset "
                          f"(parts: {list(part_names)}), got {hit_parts}")
