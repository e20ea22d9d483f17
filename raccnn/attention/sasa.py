"""Stand-alone self-attention (SASA; Ramachandran et al., "Stand-Alone Self-Attention in Vision
Models", NeurIPS 2019), as a residual block.

timm's nearest layers are not this one: ``HaloAttn`` attends from non-overlapping blocks to a haloed
window, and ``BottleneckAttn`` attends globally; SASA gives every pixel its own k x k neighbourhood,
so it is written here with ``unfold``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gate import zero_


class SASA(nn.Module):
    """y = x + W_o·o, with per head h and pixel p:

        o_p = Σ_{n ∈ N_k(p)} softmax_n( q_pᵀ k_n + q_pᵀ r_{n - p} ) v_n,

    q, k, v: 1×1 convs (no bias), ``heads`` heads of width d = channels / heads, q scaled by d^-½;
    N_k(p): the k×k neighbourhood of p inside the map (positions beyond the border are left out of
    the softmax); r_{(a, b)} = [row embedding of a ; column embedding of b], each of width d/2, per head,
    the same at every position (the paper's factorised relative embedding). W_o: 1×1 conv.

    identity_init=True: W_o is zero, so y = x at initialisation while W_o receives gradient.
    identity_init=False: W_o keeps the default init.
    Memory: the unfolded keys and values are k² times the feature map (49× for k = 7); place it on
    late, small stages.
    """

    def __init__(self, channels: int, heads: int = 4, kernel_size: int = 7, identity_init: bool = True):
        super().__init__()
        if channels % heads or (channels // heads) % 2:
            raise ValueError(f"sasa: channels ({channels}) must split into {heads} heads of even width")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"sasa: kernel_size must be odd and positive, got {kernel_size}")
        self.heads, self.kernel_size, self.dim = heads, kernel_size, channels // heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        half = self.dim // 2
        self.rel_rows = nn.Parameter(torch.randn(heads, half, kernel_size) * self.dim ** -0.5)
        self.rel_cols = nn.Parameter(torch.randn(heads, half, kernel_size) * self.dim ** -0.5)
        self.out = nn.Conv2d(channels, channels, 1, bias=False)
        if identity_init:
            zero_(self.out)

    def relative(self) -> Tensor:
        """r for every neighbour, [heads, d, k*k] (neighbour index = row offset * k + column offset)."""
        k, half = self.kernel_size, self.dim // 2
        rows = self.rel_rows[:, :, :, None].expand(self.heads, half, k, k)
        cols = self.rel_cols[:, :, None, :].expand(self.heads, half, k, k)
        return torch.cat((rows, cols), 1).reshape(self.heads, self.dim, k * k)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        k, heads, d = self.kernel_size, self.heads, self.dim
        q, key, v = self.qkv(x).chunk(3, dim=1)
        q = q.reshape(b, heads, d, h * w) * d ** -0.5

        def neighbours(t: Tensor) -> Tensor:  # [B, C, H, W] -> [B, heads, d, k*k, H*W]
            return F.unfold(t, k, padding=k // 2).reshape(b, heads, d, k * k, h * w)

        inside = F.unfold(x.new_ones(1, 1, h, w), k, padding=k // 2).bool()  # [1, k*k, H*W]
        logits = torch.einsum("bhdn,bhdjn->bhjn", q, neighbours(key))
        logits = logits + torch.einsum("bhdn,hdj->bhjn", q, self.relative().to(q.dtype))
        attn = logits.masked_fill(~inside[:, None], float("-inf")).softmax(dim=2)
        o = torch.einsum("bhjn,bhdjn->bhdn", attn, neighbours(v)).reshape(b, c, h, w)
        return x + self.out(o)
