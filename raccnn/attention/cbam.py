"""Convolutional block attention module (Woo et al., CBAM, 2018), as timm's ``CbamModule``.

timm's module computes the paper's equations once its MLP biases are switched on (the paper's
code has them): channel attention M_c(x) = g(MLP(AvgPool(x)) + MLP(MaxPool(x))) with a shared MLP
W₂ ReLU(W₁ · + b₁) + b₂, then spatial attention M_s(x') = g(BN(conv7×7([mean_c(x'); max_c(x')])))
with a bias-free conv; x' = M_c(x) ⊙ x, y = M_s(x') ⊙ x'. ``tests/test_attention.py`` checks
this against the equations written out by hand.
"""
from __future__ import annotations

from timm.layers.cbam import CbamModule

from .gate import gate_layer, zero_


def check_args(kernel_size: int, **_) -> str | None:
    """Why a CBAM block cannot take ``kernel_size``, or None: an even spatial kernel shifts the map
    by one pixel, which then no longer matches its input."""
    return None if kernel_size % 2 else f"cbam: kernel_size must be odd, got {kernel_size}"


def cbam_block(channels: int, reduction: int = 16, kernel_size: int = 7, identity_init: bool = True) -> CbamModule:
    """CBAM with hidden width ⌊C/r⌋ (r = 16) and a 7×7 spatial kernel.

    identity_init=False: g = σ and PyTorch's default init (the paper's block).
    identity_init=True: g = 2σ; the channel MLP's last layer (W₂, b₂) and the spatial BatchNorm's
    affine (weight, bias) are zero, so both maps are exactly 1 and y = x at init. Those four
    tensors receive gradient at init; W₁, b₁ and the 7×7 conv do not until they move.
    """
    block = CbamModule(channels, rd_channels=max(1, channels // reduction), spatial_kernel_size=kernel_size,
                       gate_layer=gate_layer(identity_init), mlp_bias=True)
    if identity_init:
        zero_(block.channel.fc2, block.spatial.conv.bn)
    return block
