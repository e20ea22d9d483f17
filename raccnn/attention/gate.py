"""Pieces that make an attention block the identity at initialisation.

Two forms are used, chosen per block so that the output equals the input exactly at
initialisation while the block's last learnable layer still receives gradient:

- ``ScaledSigmoid``: the gate 2·σ(z) for multiplicative blocks. When the layer that produces the
  logits z is zero-initialised, z = 0 and the gate is exactly 1 (σ(0) = 0.5 in floating point),
  so y = x · 2σ(z) = x. The zeroed layer's weights get gradient because their inputs are not zero.
- ``ZeroBlend``: y = x + γ·(f(x) − x) with a learnable scalar γ = 0, for blocks that have no
  parameters of their own (the parameter-free gather-excite); γ is then the block's only
  trainable parameter and its gradient is Σ dL/dy · (f(x) − x), non-zero at initialisation.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class ScaledSigmoid(nn.Module):
    """g(z) = 2·σ(z), a gate in (0, 2) that equals 1 at z = 0."""

    def forward(self, z: Tensor) -> Tensor:
        return 2.0 * torch.sigmoid(z)


def gate_layer(identity_init: bool) -> type[nn.Module]:
    """The gate class: 2·σ for the identity-at-init form, the paper's plain σ otherwise."""
    return ScaledSigmoid if identity_init else nn.Sigmoid


def zero_(*modules: nn.Module) -> None:
    """Set the weight and bias (where present) of each module to zero."""
    for module in modules:
        for name in ("weight", "bias"):
            param = getattr(module, name, None)
            if param is not None:
                nn.init.zeros_(param)


class ZeroBlend(nn.Module):
    """y = x + γ·(f(x) − x), γ a learnable scalar initialised to 0 (so y = x at init)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.gamma * (self.block(x) - x)
