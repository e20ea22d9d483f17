"""Convolutional block attention module (Woo et al., CBAM, 2018).

Written here rather than taken from timm: timm's ``CbamModule`` differs from the paper's code in
small details (MLP bias, pooling order), and the block needs its two maps as separate, testable
pieces with their last layers addressable for the identity-at-init form. As in the paper's code,
the channel MLP is shared by the average- and max-pooled descriptors and has biases, and the 7×7
spatial conv has no bias and is followed by BatchNorm.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .gate import gate_layer, zero_


class ChannelGate(nn.Module):
    """M_c(x) = g(MLP(AvgPool(x)) + MLP(MaxPool(x))) ∈ R^{C×1×1}, MLP = W₂ ReLU(W₁ · + b₁) + b₂."""

    def __init__(self, channels: int, reduction: int = 16, identity_init: bool = True):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = gate_layer(identity_init)()
        if identity_init:
            zero_(self.fc2)

    def mlp(self, v: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(v)))

    def forward(self, x: Tensor) -> Tensor:
        avg = x.mean(dim=(2, 3), keepdim=True)
        mx = x.amax(dim=(2, 3), keepdim=True)
        return self.gate(self.mlp(avg) + self.mlp(mx))


class SpatialGate(nn.Module):
    """M_s(x) = g(BN(conv7×7([mean_c(x); max_c(x)]))) ∈ R^{1×H×W}."""

    def __init__(self, kernel_size: int = 7, identity_init: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)
        self.gate = gate_layer(identity_init)()
        if identity_init:
            zero_(self.bn)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat((x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)), dim=1)
        return self.gate(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """x' = M_c(x) ⊙ x, then y = M_s(x') ⊙ x' (channel first, then spatial; r = 16, 7×7 kernel).

    identity_init=False: g = σ and PyTorch's default init (the paper's block).
    identity_init=True: g = 2σ; the channel MLP's last layer (W₂, b₂) and the spatial BatchNorm's
    affine (weight, bias) are zero, so both maps are exactly 1 and y = x at init. Those four
    tensors receive gradient at init; W₁, b₁ and the 7×7 conv do not until they move.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, identity_init: bool = True):
        super().__init__()
        self.channel = ChannelGate(channels, reduction, identity_init)
        self.spatial = SpatialGate(kernel_size, identity_init)

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.channel(x)
        return x * self.spatial(x)
