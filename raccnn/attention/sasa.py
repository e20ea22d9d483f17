"""Stand-alone self-attention (SASA; Ramachandran et al., "Stand-Alone Self-Attention in Vision
Models", NeurIPS 2019): every pixel attends over its own k×k neighbourhood.

Two forms share one attention function (``local_attention``):

- ``SASA``: a residual block after a stage (``build_attention("sasa", C)``), identity at init;
- ``SASAConv``: the paper's use, a layer in place of a spatial convolution (C_in -> C_out, stride 1);
  ``raccnn.attention.placement.replace_convs`` swaps a stage's 3×3 convolutions for it
  (``model.attention.replace_convs``).

timm's nearest layers are not this one: ``HaloAttn`` attends from non-overlapping blocks to a haloed
window, and ``BottleneckAttn`` attends globally; SASA gives every pixel its own k x k neighbourhood,
so it is written here (``local_attention``: by ``unfold`` or, on small maps, dense and masked).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .args import checked_arguments
from .gate import zero_


LOCAL_ATTENTION_IMPLS = ("auto", "dense", "unfold")


def local_attention(q: Tensor, key: Tensor, v: Tensor, rel_rows: Tensor, rel_cols: Tensor,
                    impl: str = "auto") -> Tensor:
    """o_p = Σ_{n ∈ N_k(p)} softmax_n( q_pᵀ k_n + q_pᵀ r_{n - p} ) v_n, per head and pixel p.

    q, key, v: [B, heads·d, H, W] (q already scaled); rel_rows, rel_cols: [heads, d/2, k], the row and
    column halves of the relative embedding r_{(a, b)} = [rows[a] ; cols[b]], the same at every
    position (the paper's factorised form). N_k(p): the k×k neighbourhood of p inside the map
    (positions beyond the border are left out of the softmax). Returns o, [B, heads·d, H, W].

    Two computations of the same formula (equal up to float rounding, both tested against a
    per-pixel loop): ``unfold`` gathers every pixel's k² neighbours (its largest tensor holds
    B·heads·d·k²·H·W numbers); ``dense`` scores every pixel against all H·W pixels with matrix
    products and masks out the pairs farther than k // 2 (B·heads·(H·W)² numbers). ``auto`` takes
    the one whose largest tensor is smaller: dense while H·W <= d·k², which is also where the
    measured times of the two cross (``python tools/benchmark.py attention``, docs/ablations.md).
    """
    h, w = q.shape[-2:]
    half, k = rel_rows.shape[1:]
    if impl not in LOCAL_ATTENTION_IMPLS:
        raise ValueError(f"local_attention impl {impl!r}; choose one of {list(LOCAL_ATTENTION_IMPLS)}")
    if impl == "auto":
        impl = auto_local_attention(h, w, 2 * half, k)
    attend = _dense_local_attention if impl == "dense" else _unfold_local_attention
    return attend(q, key, v, rel_rows.to(q.dtype), rel_cols.to(q.dtype))


def auto_local_attention(h: int, w: int, d: int, k: int) -> str:
    """The computation ``impl="auto"`` takes for an H×W map, head width d and window k: the one
    whose largest tensor is smaller."""
    return "dense" if h * w <= d * k * k else "unfold"


def _unfold_local_attention(q, key, v, rel_rows, rel_cols):
    b, c, h, w = q.shape
    heads, half, k = rel_rows.shape
    d = 2 * half
    rel = torch.cat((rel_rows[:, :, :, None].expand(heads, half, k, k),
                     rel_cols[:, :, None, :].expand(heads, half, k, k)), 1).reshape(heads, d, k * k)

    def neighbours(t: Tensor) -> Tensor:  # [B, C, H, W] -> [B, heads, d, k*k, H*W]
        return F.unfold(t, k, padding=k // 2).reshape(b, heads, d, k * k, h * w)

    q = q.reshape(b, heads, d, h * w)
    inside = F.unfold(q.new_ones(1, 1, h, w), k, padding=k // 2).bool()  # [1, k*k, H*W]
    logits = torch.einsum("bhdn,bhdjn->bhjn", q, neighbours(key))
    logits = logits + torch.einsum("bhdn,hdj->bhjn", q, rel)
    attn = logits.masked_fill(~inside[:, None], float("-inf")).softmax(dim=2)
    return torch.einsum("bhjn,bhdjn->bhdn", attn, neighbours(v)).reshape(b, c, h, w)


def _dense_local_attention(q, key, v, rel_rows, rel_cols):
    b, c, h, w = q.shape
    heads, half, k = rel_rows.shape
    n, r = h * w, k // 2
    q = q.reshape(b, heads, 2 * half, n).transpose(2, 3)  # [B, heads, N, d]
    key = key.reshape(b, heads, 2 * half, n)  # [B, heads, d, N]
    v = v.reshape(b, heads, 2 * half, n).transpose(2, 3)  # [B, heads, N, d]
    # offsets between the query's row (column) and every key row (column), and where they exceed r
    dy = torch.arange(h, device=q.device)[None, :] - torch.arange(h, device=q.device)[:, None]
    dx = torch.arange(w, device=q.device)[None, :] - torch.arange(w, device=q.device)[:, None]
    row_of = lambda t: t.repeat_interleave(w, dim=0)  # noqa: E731  [H, ·] -> [N (query), ·]
    col_of = lambda t: t.repeat(h, 1)  # noqa: E731  [W, ·] -> [N (query), ·]
    far = (row_of(dy.abs() > r)[:, :, None] | col_of(dx.abs() > r)[:, None, :]).reshape(n, n)
    # q_pᵀ r_{n-p} = q_p[:d/2]ᵀ rows[row offset] + q_p[d/2:]ᵀ cols[column offset]: one term per key
    # row and one per key column, broadcast over the other axis
    row_term = (q[..., :half] @ rel_rows).gather(3, row_of(dy + r).clamp(0, k - 1).expand(b, heads, n, h))
    col_term = (q[..., half:] @ rel_cols).gather(3, col_of(dx + r).clamp(0, k - 1).expand(b, heads, n, w))
    logits = (q @ key).view(b, heads, n, h, w) + row_term[..., :, None] + col_term[..., None, :]
    attn = logits.view(b, heads, n, n).masked_fill(far, float("-inf")).softmax(dim=3)
    return (attn @ v).transpose(2, 3).reshape(b, c, h, w)


def check_args(channels: int, heads: int, kernel_size: int, name: str = "sasa", **_) -> str | None:
    """Why a SASA block or layer (``name``, in the message) of ``channels`` output channels cannot
    take ``heads`` and ``kernel_size``, or None."""
    if channels % heads or (channels // heads) % 2:
        return f"{name}: channels ({channels}) must split into {heads} heads of even width"
    if kernel_size < 1 or kernel_size % 2 == 0:
        return f"{name}: kernel_size must be odd and positive, got {kernel_size}"
    return None


def check_layer(channels: int, **kwargs) -> None:
    """Raise ValueError when ``SASAConv(C_in, channels, **kwargs)`` would refuse ``kwargs``; builds nothing."""
    try:
        arguments = checked_arguments(SASAConv, channels, channels, **kwargs)
    except ValueError as e:
        raise ValueError(f"{SASAConv.name}: {e}") from None
    if problem := check_args(channels, arguments["heads"], arguments["kernel_size"], SASAConv.name):
        raise ValueError(problem)


class SASAConv(nn.Module):
    """The paper's attention layer in place of a spatial convolution: y = o, o = ``local_attention``
    of q, k, v = W_Q x, W_K x, W_V x (1×1, C_in -> C_out, no bias), ``heads`` heads of width
    d = C_out / heads, q scaled by d^-½; stride 1, output size = input size (as a padded 3×3 conv)."""

    name = "sasa layer"  # in error messages

    def __init__(self, in_channels: int, out_channels: int, heads: int = 4, kernel_size: int = 7):
        super().__init__()
        if problem := check_args(out_channels, heads, kernel_size, self.name):
            raise ValueError(problem)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.heads, self.kernel_size, self.dim = heads, kernel_size, out_channels // heads
        self.qkv = nn.Conv2d(in_channels, 3 * out_channels, 1, bias=False)
        self.rel_rows = nn.Parameter(torch.randn(heads, self.dim // 2, kernel_size) * self.dim ** -0.5)
        self.rel_cols = nn.Parameter(torch.randn(heads, self.dim // 2, kernel_size) * self.dim ** -0.5)

    def forward(self, x: Tensor) -> Tensor:
        q, key, v = self.qkv(x).chunk(3, dim=1)
        return local_attention(q * self.dim ** -0.5, key, v, self.rel_rows, self.rel_cols)


class SASA(SASAConv):
    """y = x + W_o·o: the layer above with C_in = C_out = ``channels``, as a residual block. W_o: 1×1 conv.

    identity_init=True: W_o is zero, so y = x at initialisation while W_o receives gradient.
    identity_init=False: W_o keeps the default init. Place it on late, small stages (its memory grows with the map: ``local_attention``).
    """

    name = "sasa"

    def __init__(self, channels: int, heads: int = 4, kernel_size: int = 7, identity_init: bool = True):
        super().__init__(channels, channels, heads, kernel_size)
        self.out = nn.Conv2d(channels, channels, 1, bias=False)
        if identity_init:
            zero_(self.out)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.out(super().forward(x))
