"""Self-attention of SAGAN (Zhang et al., 2019).

timm has no SAGAN block. The widths and the 2×2 max-pool of the key and value maps follow the
paper's released code (f, g at C/8, h at C/2 with an output conv v back to C). The paper's spectral
normalisation of the convs is a GAN-training device and is not applied here.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .gate import zero_
from .nonlocal_block import softmax_affinity, subsample


class SelfAttention(nn.Module):
    """y = x + γ·o,  oⱼ = v(Σᵢ βⱼᵢ h(xᵢ)),  βⱼᵢ = softmax_i(f(xⱼ)ᵀ g(xᵢ)).

    f, g: 1×1 convs C → C/8, h: 1×1 conv C → C/2, v: 1×1 conv C/2 → C, all without bias; with
    ``sub_sample`` (default) g(x) and h(x) are 2×2 max-pooled (ceil mode).

    identity_init=False: γ = 0 and default conv init, as in the paper, which is already the
    identity at init; only γ receives gradient at init.
    identity_init=True: v's weight is zero and γ = 1, so y = x at init; v's weight receives
    gradient at init (f, g, h and γ do not until v moves).
    """

    def __init__(self, channels: int, reduction: int = 8, value_reduction: int = 2, sub_sample: bool = True,
                 identity_init: bool = True):
        super().__init__()
        inner, value = max(1, channels // reduction), max(1, channels // value_reduction)
        self.sub_sample = sub_sample
        self.f = nn.Conv2d(channels, inner, 1, bias=False)
        self.g = nn.Conv2d(channels, inner, 1, bias=False)
        self.h = nn.Conv2d(channels, value, 1, bias=False)
        self.v = nn.Conv2d(value, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.full((), 1.0 if identity_init else 0.0))
        if identity_init:
            zero_(self.v)

    def attention(self, x: Tensor) -> Tensor:
        """β: [B, N, M], row j = softmax over the (pooled) positions i."""
        return softmax_affinity(self.f(x), subsample(self.g(x), self.sub_sample))

    def forward(self, x: Tensor) -> Tensor:
        b, _, hgt, wid = x.shape
        h = subsample(self.h(x), self.sub_sample).flatten(2)  # [B, C/2, M]
        o = (h @ self.attention(x).transpose(1, 2)).reshape(b, -1, hgt, wid)
        return x + self.gamma * self.v(o)
