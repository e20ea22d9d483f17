"""Non-local block, embedded-Gaussian form (Wang et al., 2018).

Written here rather than taken from timm: timm's ``NonLocalAttn`` uses an inner width of C/8 and
never subsamples, while the paper uses C/2 and max-pools φ and g by 2×2, which divides the
O((HW)²) affinity by 4 (conv4 of a 448 input has 56² = 3136 positions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gate import zero_


def subsample(t: Tensor, on: bool = True) -> Tensor:
    """2×2 max-pool (ceil mode, so odd and 1-pixel sizes work) when ``on``."""
    return F.max_pool2d(t, 2, 2, ceil_mode=True) if on else t


def softmax_affinity(query: Tensor, key: Tensor) -> Tensor:
    """softmax over j of qᵢᵀ kⱼ for query [B, C', H, W] and key [B, C', h, w] maps: [B, H·W, h·w]."""
    return torch.softmax(query.flatten(2).transpose(1, 2) @ key.flatten(2), dim=-1)


class NonLocal(nn.Module):
    """z = BN(W_z y) + x,  yᵢ = Σⱼ softmax_j(θ(xᵢ)ᵀ φ(xⱼ)) g(xⱼ).

    θ, φ, g are 1×1 convs C → C/2; with ``sub_sample`` (default) φ(x) and g(x) are 2×2 max-pooled
    (ceil mode, so odd and 1-pixel sizes work); W_z is a 1×1 conv C/2 → C followed by BatchNorm
    (``norm=True``, the paper's setting) or not.

    The paper zero-initialises the BatchNorm's scale (or W_z itself when there is no BN), so its
    block is already the identity at init: identity_init=True and False build the same block.
    Zero at init: the BN's weight and bias (with ``norm``), else W_z's weight and bias. Those
    receive gradient at init; θ, φ, g and (with ``norm``) W_z do not until they move. (W_z is not
    zeroed when a BN follows it: a BN over a constant-zero input divides its gradient by √eps.)
    """

    def __init__(self, channels: int, reduction: int = 2, sub_sample: bool = True, norm: bool = True,
                 identity_init: bool = True):
        super().__init__()
        inner = max(1, channels // reduction)
        self.inner, self.sub_sample = inner, sub_sample
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.w_z = nn.Conv2d(inner, channels, 1)
        self.bn = nn.BatchNorm2d(channels) if norm else nn.Identity()
        zero_(self.bn if norm else self.w_z)

    def affinity(self, x: Tensor) -> Tensor:
        """f = softmax over j of θ(xᵢ)ᵀ φ(xⱼ): [B, N, M], N = H·W, M = positions of φ."""
        return softmax_affinity(self.theta(x), subsample(self.phi(x), self.sub_sample))

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        g = subsample(self.g(x), self.sub_sample).flatten(2)  # [B, C', M]
        y = (self.affinity(x) @ g.transpose(1, 2)).transpose(1, 2)  # [B, C', N]
        y = y.reshape(b, self.inner, h, w)
        return x + self.bn(self.w_z(y))
