"""What a model produced over a dataset, typed: ``collect_outputs`` returns it, the metrics, the
predictions file and the training's validation read it by attribute.

Scales are numbered from 1; ``logits[0]`` is scale 1's. The squares exist for scales 2..n:
``abs_boxes[0]`` is the square scale 2 zooms into. All tensors are on the CPU, one row per image in
dataset order, except ``tl_bounds`` (one row per proposer) and ``image_size``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Callable

import torch
from torch import Tensor

SHARED_FIELDS = ("image_size", "tl_bounds")  # not one row per image: the same on every process


@dataclass
class Outputs:
    logits: list[Tensor]  # n_scales x [N, K]
    label: Tensor  # [N] int64
    image_size: tuple[int, int]  # (H, W) of the input images
    fused: dict[str, Tensor] = field(default_factory=dict)  # "12", "123", ...: [N, K]
    abs_boxes: list[Tensor] = field(default_factory=list)  # scales 2..n: [N, 3] in input-image coordinates
    rel_boxes: list[Tensor] = field(default_factory=list)  # scales 2..n: [N, 3] each proposer's own output
    peak_boxes: list[Tensor] = field(default_factory=list)  # scales 2..n: [N, 3] (``inference.peak_boxes``)
    box: Tensor | None = None  # [N, 4] object boxes, xyxy pixels (NaN where none)
    parts: Tensor | None = None  # [N, P, 3] part (x, y, visible), pixels
    index: Tensor | None = None  # [N] dataset index of each row
    tl_bounds: Tensor | None = None  # [n_scales - 1, 2] each proposer's (tl_min, tl_max)

    @property
    def n_scales(self) -> int:
        return len(self.logits)

    def heads(self) -> dict[str, Tensor]:
        """Every head's logits in display order: scale1, ..., scale{n}, fused12, fused123, ..."""
        heads = {f"scale{s}": logits for s, logits in enumerate(self.logits, start=1)}
        heads.update({f"fused{name}": self.fused[name] for name in sorted(self.fused, key=len)})
        return heads

    def box_scales(self) -> list[int]:
        """The scales s >= 2 whose squares are held, in order."""
        return list(range(2, 2 + len(self.abs_boxes)))

    def map_rows(self, fn: Callable[[Tensor], Tensor]) -> "Outputs":
        """A copy with ``fn`` applied to every per-image tensor (e.g. a reordering)."""
        changed = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SHARED_FIELDS or value is None:
                continue
            if isinstance(value, list):
                changed[f.name] = [fn(v) for v in value]
            elif isinstance(value, dict):
                changed[f.name] = {k: fn(v) for k, v in value.items()}
            else:
                changed[f.name] = fn(value)
        return replace(self, **changed)

    @staticmethod
    def concat(parts: list["Outputs"]) -> "Outputs":
        """The rows of ``parts`` one after the other (their shared fields are taken from the first)."""
        first = parts[0]
        changed = {}
        for f in fields(first):
            value = getattr(first, f.name)
            if f.name in SHARED_FIELDS or value is None:
                continue
            values = [getattr(p, f.name) for p in parts]
            if isinstance(value, list):
                changed[f.name] = [torch.cat(column) for column in zip(*values)]
            elif isinstance(value, dict):
                changed[f.name] = {k: torch.cat([v[k] for v in values]) for k in value}
            else:
                changed[f.name] = torch.cat(values)
        return replace(first, **changed)
