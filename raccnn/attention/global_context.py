"""Global context block (Cao et al., GCNet, 2019).

timm's ``GlobalContext`` with ``fuse_add=True, fuse_scale=False`` is the paper's block
(softmax-weighted context over positions, 1×1 conv to C/r, LayerNorm, ReLU, 1×1 conv to C,
fused by addition) and is used with the paper's r = 16 (timm's default is 1/8) and its default
fusion by addition (timm's ``gc`` default fuses by scaling). timm zero-initialises only the
last conv's weight; the bias is zeroed here too, as in the paper's code, so the block is
exactly the identity at init.
"""
from __future__ import annotations

from timm.layers import GlobalContext

from .gate import zero_


def gc_block(channels: int, reduction: int = 16, identity_init: bool = True) -> GlobalContext:
    """y = x + W₂ ReLU(LN(W₁ Σⱼ αⱼ xⱼ)),  αⱼ = softmax_j(W_k xⱼ), W₁: C → C/r, W₂: C/r → C.

    The paper initialises W₂ (weight and bias) to zero, so its own block is already the identity
    at init: identity_init=True and False build the same block. W₂'s weight and bias receive
    gradient at init (W_k and W₁ do not until W₂ moves).
    """
    hidden = max(1, channels // reduction)
    block = GlobalContext(channels, fuse_add=True, fuse_scale=False, rd_channels=hidden)
    zero_(block.mlp_add.fc2)
    return block
