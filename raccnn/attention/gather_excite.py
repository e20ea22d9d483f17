"""Gather-excite (Hu et al., GE-Net, 2018).

Written here rather than taken from timm: timm's ``GatherExcite`` raises a TypeError in its
default (MLP) configuration in timm 1.0.21–1.0.31, and its global parametric form needs the
feature size fixed at construction, which RA-CNN's scales (different input sizes) do not have.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .gate import ZeroBlend, gate_layer, zero_


class GatherExcite(nn.Module):
    """y = x ⊙ g(interp(ξ_G(x))): gather ξ_G over an extent e, excite by nearest-neighbour
    resizing back to H×W and a gate g.

    - ``param=False`` (GE-θ⁻, no parameters): ξ_G = e×e average pooling with stride e (partial
      windows at odd borders average what they cover); e = 0 means global average pooling.
    - ``param=True`` (GE-θ): ξ_G = log₂ e depthwise 3×3 stride-2 convs, each followed by
      BatchNorm, with ReLU between them; e must be a power of two ≥ 2 (the global form would need a
      depthwise kernel of the feature map's fixed size).

    Paper init (identity_init=False): g = σ. With identity_init=True, GE-θ uses g = 2σ and a zero
    affine (weight, bias) on its last BatchNorm, so ξ_G = 0, g = 1 and y = x; those two tensors
    receive gradient at init. GE-θ⁻ has no parameters, so ``gather_excite`` wraps it in
    ``ZeroBlend`` (y = x + γ·(GE(x) − x), γ = 0), whose γ receives gradient at init.
    """

    def __init__(self, channels: int, extent: int = 0, param: bool = False, identity_init: bool = False):
        super().__init__()
        if problem := check_args(extent, param):
            raise ValueError(problem)
        self.extent, self.param = extent, param
        self.gather = None
        if param:
            layers = []
            for i in range(int(math.log2(extent))):
                if i:
                    layers.append(nn.ReLU(inplace=True))
                layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False),
                           nn.BatchNorm2d(channels)]
            self.gather = nn.Sequential(*layers)
            if identity_init:
                zero_(layers[-1])
        self.gate = gate_layer(identity_init and param)()

    def gathered(self, x: Tensor) -> Tensor:
        if self.gather is not None:
            return self.gather(x)
        if self.extent == 0:
            return x.mean(dim=(2, 3), keepdim=True)
        return F.avg_pool2d(x, self.extent, self.extent, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        context = F.interpolate(self.gathered(x), size=x.shape[-2:], mode="nearest")
        return x * self.gate(context)


def check_args(extent: int | None, param: bool, **_) -> str | None:
    """Why a gather-excite block cannot take ``extent`` and ``param``, or None (``extent`` None: the
    default of ``gather_excite``)."""
    if extent is None:
        return None
    if not isinstance(extent, int) or isinstance(extent, bool):
        return f"gather-excite extent must be an integer, got {extent!r}"
    if extent < 0:
        return f"gather-excite extent must be >= 0 (0 = global), got {extent}"
    if param and (extent < 2 or extent & (extent - 1)):
        return f"parametric gather-excite needs an extent that is a power of two >= 2, got {extent}"
    return None


def gather_excite(channels: int, extent: int | None = None, param: bool = False,
                  identity_init: bool = True) -> nn.Module:
    """GE-θ⁻ (``param=False``, default extent 0 = global) or GE-θ (``param=True``, default extent 8)."""
    if extent is None:
        extent = 8 if param else 0
    block = GatherExcite(channels, extent, param, identity_init)
    if identity_init and not param:
        return ZeroBlend(block)
    return block
