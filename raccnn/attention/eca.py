"""Efficient channel attention (Wang et al., ECA-Net, 2020).

timm's ``EcaModule`` computes the paper's block (global average pool, 1-D convolution across
channels without bias, sigmoid, channel-wise scale) and is used as is. The kernel size is computed
here and passed explicitly, because timm clamps it to at least 3 while the paper's
k = |(log₂ C + b) / γ|_odd has no lower bound (they differ only for C < 8).
"""
from __future__ import annotations

import math

from timm.layers import EcaModule

from .gate import gate_layer, zero_


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """k = |(log₂ C + b) / γ|_odd: the truncated value, made odd by adding 1 when it is even."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


def check_args(gamma: float, **_) -> str | None:
    """Why an ECA block cannot take ``gamma`` (the kernel size divides by it), or None."""
    return None if gamma != 0 else "eca: gamma must not be 0 (the kernel size divides by it)"


def eca_block(channels: int, gamma: float = 2.0, beta: float = 1.0, identity_init: bool = True) -> EcaModule:
    """y = x ⊙ g(conv1d_k(GAP(x))), a k-tap convolution over the channel axis, k = eca_kernel_size(C).

    identity_init=False: g = σ, PyTorch's default init (the paper's block).
    identity_init=True: g = 2σ and the conv1d weight is zero, so y = x at init; that weight
    receives gradient at init.
    """
    block = EcaModule(channels=None, kernel_size=eca_kernel_size(channels, gamma, beta),
                      gate_layer=gate_layer(identity_init))
    if identity_init:
        zero_(block.conv)
    return block
