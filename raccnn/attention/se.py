"""Squeeze-and-excitation (Hu et al., 2018).

timm's ``SEModule`` computes exactly the paper's block (global average pool, 1×1 conv = FC to
C/r, ReLU, FC back to C, sigmoid, channel-wise scale), so it is used as is, with two settings:
the hidden width is passed explicitly as the paper's ⌊C/r⌋ (timm would round it up to a multiple
of 8, which for narrow trunks such as ``vgg_small`` doubles or more the width), and the gate class
is chosen by ``identity_init``.
"""
from __future__ import annotations

from timm.layers import SEModule

from .gate import gate_layer, zero_


def se_block(channels: int, reduction: int = 16, identity_init: bool = True) -> SEModule:
    """y = x ⊙ g(W₂ δ(W₁ GAP(x) + b₁) + b₂), W₁ ∈ R^{C/r×C}, W₂ ∈ R^{C×C/r}, δ = ReLU.

    identity_init=False: g = σ, PyTorch's default init (the paper's block).
    identity_init=True: g = 2σ and W₂, b₂ are zero, so y = x at init; W₂ and b₂ receive gradient
    at init (W₁, b₁ do not until W₂ moves).
    """
    hidden = max(1, channels // reduction)
    block = SEModule(channels, rd_channels=hidden, gate_layer=gate_layer(identity_init))
    if identity_init:
        zero_(block.fc2)
    return block
