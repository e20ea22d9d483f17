"""Dual attention (Fu et al., DANet, 2019): position and channel attention, summed.

timm has no DANet. The channel affinity follows the paper's equation softmax(A Aᵀ); the paper's
released code instead takes the softmax of (max − A Aᵀ), i.e. of −A Aᵀ.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .gate import zero_


class PositionAttention(nn.Module):
    """P(x)ⱼ = Σᵢ sⱼᵢ V(xᵢ),  sⱼᵢ = softmax_i(Q(xⱼ)ᵀ K(xᵢ)); Q, K: 1×1 convs C → C/8 (the paper's B
    and C), V: 1×1 conv C → C (the paper's D)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)

    def affinity(self, x: Tensor) -> Tensor:
        """s: [B, N, N], row j = softmax over positions i of Q(xⱼ)ᵀ K(xᵢ)."""
        q = self.query(x).flatten(2)  # [B, C', N]
        k = self.key(x).flatten(2)
        return torch.softmax(q.transpose(1, 2) @ k, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        v = self.value(x).flatten(2)  # [B, C, N]
        return (v @ self.affinity(x).transpose(1, 2)).reshape(x.shape)


def channel_affinity(x: Tensor) -> Tensor:
    """X: [B, C, N]; returns softmax over channels i of Aⱼ · Aᵢ: [B, C, C] (row j sums to 1)."""
    a = x.flatten(2)
    return torch.softmax(a @ a.transpose(1, 2), dim=-1)


def channel_attention(x: Tensor) -> Tensor:
    """Ch(x)ⱼ = Σᵢ xⱼᵢ Aᵢ with the channel affinity xⱼᵢ above (no parameters)."""
    return (channel_affinity(x) @ x.flatten(2)).reshape(x.shape)


class DANet(nn.Module):
    """y = x + α·P(x) + β·Ch(x), i.e. PAM(x) + CAM(x) − x with the paper's residual modules
    PAM(x) = α·P(x) + x and CAM(x) = β·Ch(x) + x.

    identity_init=False: α = β = 0 and default conv init, as in the paper, which is already the
    identity at init; only α and β receive gradient at init.
    identity_init=True: the value conv V (weight, bias) is zero and α = 1, so P(x) = 0; β = 0
    (channel attention has no other parameter). y = x at init; V's weight and bias and β receive
    gradient at init (Q, K and α do not until V moves).
    """

    def __init__(self, channels: int, reduction: int = 8, identity_init: bool = True):
        super().__init__()
        self.position = PositionAttention(channels, reduction)
        self.alpha = nn.Parameter(torch.full((), 1.0 if identity_init else 0.0))
        self.beta = nn.Parameter(torch.zeros(()))
        if identity_init:
            zero_(self.position.value)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.alpha * self.position(x) + self.beta * channel_attention(x)
