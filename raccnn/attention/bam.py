"""Bottleneck attention module (Park et al., BAM, 2018).

timm has no BAM. Layout as in the paper and its code: channel branch GAP → FC(C/r) → BN → ReLU →
FC(C); spatial branch 1×1 conv (C/r) → BN → ReLU → two (3×3 conv, dilation d, BN, ReLU) → 1×1 conv
to one map; r = 16, d = 4. The two BatchNorms over [B, C/r, 1, 1] need a batch of at least 2 in
training mode.
"""
from __future__ import annotations

from torch import Tensor, nn

from .gate import zero_


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> list[nn.Module]:
    pad = dilation * (kernel // 2)
    return [nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class BAM(nn.Module):
    """y = x + x ⊙ σ(M_c(x) + M_s(x)) = x ⊙ (1 + σ(M)),  M_c ∈ R^{C×1×1}, M_s ∈ R^{1×H×W}.

    The gate 1 + σ(M) ∈ (1, 2) of the paper can only be 1 at M = −∞, so the identity-at-init form
    (identity_init=True) uses the gate 2σ(M) ∈ (0, 2) instead, y = x ⊙ 2σ(M), with the last layer
    of each branch (the channel FC and the spatial 1×1 conv, weight and bias) zero: M = 0 and
    y = x at init, and those four tensors receive gradient at init.
    identity_init=False: the paper's gate 1 + σ(M) with default init.
    """

    def __init__(self, channels: int, reduction: int = 16, dilation: int = 4, identity_init: bool = True):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.identity_init = identity_init
        self.channel = nn.Sequential(*_conv_bn_relu(channels, hidden), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Sequential(
            *_conv_bn_relu(channels, hidden),
            *_conv_bn_relu(hidden, hidden, 3, dilation),
            *_conv_bn_relu(hidden, hidden, 3, dilation),
            nn.Conv2d(hidden, 1, 1),
        )
        if identity_init:
            zero_(self.channel[-1], self.spatial[-1])

    def logits(self, x: Tensor) -> Tensor:
        """M = M_c(x) + M_s(x): [B, C, H, W]."""
        return self.channel(x.mean(dim=(2, 3), keepdim=True)) + self.spatial(x)

    def forward(self, x: Tensor) -> Tensor:
        m = self.logits(x).sigmoid()
        return x * (2.0 * m) if self.identity_init else x * (1.0 + m)
