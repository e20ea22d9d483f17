"""Attention proposal network (APN): last-conv features -> a square (tx, ty, tl).

Two fully connected layers, as in RA-CNN: pool -> FC -> tanh -> FC(3) -> sigmoid. The features are
average-pooled to a small ``pool_size`` x ``pool_size`` grid and flattened, not globally pooled: a
global pool would throw away exactly the spatial layout the APN has to read the location from.

The sigmoid outputs u in (0, 1)^3 are mapped into the configured bounds:

    tl = tl_min + (tl_max - tl_min) * u_l
    tx = tl + (1 - 2 tl) * u_x,  ty = tl + (1 - 2 tl) * u_y       (keep_inside=True)
    tx = u_x,                    ty = u_y                          (keep_inside=False)

so every output respects the bounds by construction (no clamping, whose gradient would be zero).

Defaults, tl in [0.1, 0.5]: tl is a fraction of the parent scale's side, so one scale can zoom up
to 1 / (2 tl_min) = 5x and two scales up to 25x. The public ports' rule tl >= 1/3 allows only 1.5x
per scale, too little to isolate a part that covers a few percent of the image. tl_max = 0.5 lets
the APN keep the whole image when that is best, and the trainer logs the box statistics every round
so a drift to either bound is visible.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TL_MIN, TL_MAX = 0.1, 0.5  # default bounds of every proposer's half side


def peak_targets(fmap: Tensor, tl: float) -> Tensor:
    """Squares (tx, ty, tl) centred on the strongest channel-summed response of ``fmap`` [B, C, h, w]
    (at feature resolution), half side ``tl``: the APN's initialisation targets (RA-CNN, Sec. 3.4)."""
    b, _, h, w = fmap.shape
    flat = fmap.sum(dim=1).flatten(1).argmax(dim=1)
    rows, cols = torch.div(flat, w, rounding_mode="floor"), flat % w
    cx, cy = (cols.float() + 0.5) / w, (rows.float() + 0.5) / h
    return torch.stack((cx, cy, torch.full_like(cx, tl)), dim=1)


class APN(nn.Module):
    def __init__(
        self,
        in_channels: int,
        hidden: int = 256,
        pool_size: int = 4,
        tl_min: float = TL_MIN,
        tl_max: float = TL_MAX,
        keep_inside: bool = True,
    ):
        super().__init__()
        if not 0.0 < tl_min <= tl_max <= 0.5:
            raise ValueError(f"APN bounds need 0 < tl_min <= tl_max <= 0.5, got tl_min={tl_min}, tl_max={tl_max}")
        self.tl_min, self.tl_max, self.keep_inside = float(tl_min), float(tl_max), bool(keep_inside)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.fc1 = nn.Linear(in_channels * pool_size * pool_size, hidden)
        self.fc2 = nn.Linear(hidden, 3)
        # Start from the centre square of mid-range size; init_apn then regresses real targets.
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def raw(self, feats: Tensor) -> Tensor:
        """Pre-sigmoid outputs [B, 3]."""
        return self.fc2(torch.tanh(self.fc1(self.pool(feats).flatten(1))))

    def to_box(self, u: Tensor) -> Tensor:
        """Map sigmoid outputs u in (0, 1)^3 into a box (tx, ty, tl) within the bounds."""
        tl = self.tl_min + (self.tl_max - self.tl_min) * u[:, 2]
        if self.keep_inside:
            tx = tl + (1 - 2 * tl) * u[:, 0]
            ty = tl + (1 - 2 * tl) * u[:, 1]
        else:
            tx, ty = u[:, 0], u[:, 1]
        return torch.stack((tx, ty, tl), dim=1)

    def from_box(self, boxes: Tensor, eps: float = 1e-4) -> Tensor:
        """Inverse of ``to_box`` (clipped into the bounds): the u that produces ``boxes``."""
        tl = boxes[:, 2].clamp(self.tl_min, self.tl_max)
        ul = (tl - self.tl_min) / max(self.tl_max - self.tl_min, 1e-12)
        if self.keep_inside:
            span = (1 - 2 * tl).clamp_min(1e-12)
            ux, uy = (boxes[:, 0] - tl) / span, (boxes[:, 1] - tl) / span
        else:
            ux, uy = boxes[:, 0], boxes[:, 1]
        return torch.stack((ux, uy, ul), dim=1).clamp(eps, 1 - eps)

    def forward(self, feats: Tensor) -> Tensor:
        # the box arithmetic in fp32 also under autocast (the crop samples with these numbers)
        return self.to_box(torch.sigmoid(self.raw(feats).float()))

    def init_loss(self, fmap: Tensor, tl: float, peak_map: Tensor | None = None) -> Tensor:
        """MSE between this APN's squares (read from ``fmap``) and the ``peak_targets`` of
        ``peak_map`` (default: ``fmap`` itself), clipped into the APN's bounds, so a target it cannot
        reach does not pull its sigmoid into saturation."""
        goal = self.to_box(self.from_box(peak_targets(fmap if peak_map is None else peak_map, tl)))
        return F.mse_loss(self(fmap), goal)
