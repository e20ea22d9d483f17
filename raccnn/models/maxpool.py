"""A 2x2, stride-2 max-pool with the values and gradients of ``F.max_pool2d``, faster on the CPU.

PyTorch's CPU kernel for ``max_pool2d`` on NCHW tensors is several times slower than its
channels-last kernel and than the elementwise maximum of a window's four strided sub-grids, and the
pools are a large share of the small default model's evaluation step (``python tools/benchmark.py pool``,
measured in docs/speed.md).
Keeping the model in NCHW (``train.channels_last=false``, the CPU default) keeps every
convolution's float rounding, so a run's numbers stay those of ``nn.MaxPool2d``; only the pools
take a faster road:

- no gradient needed (eval, frozen scales, fusion): the maximum of the four sub-grids;
- gradient needed: PyTorch's own kernel run on a channels-last copy, which also returns the argmax
  indices; the backward is PyTorch's NCHW ``max_pool2d_with_indices_backward`` with those indices.

The gradient road gives ``F.max_pool2d``'s output and input gradient bit for bit, ties included
(both kernels send the gradient to the first maximum of a window in row-major order, or to its last
NaN; tested on tie-heavy inputs), NaN payloads aside. The gradient-free road gives the same
numbers; only where a window's maximum is a zero, or a NaN, may its sign bit or NaN payload differ
(``torch.maximum`` keeps another of two tied zeros, +0 and -0, than the pooling kernel does). Outputs have
standard NCHW strides, as ``F.max_pool2d``'s, so the next convolution takes the same kernel path.
Supported: reverse-mode autograd to first and second order; forward-mode AD, ``torch.func``
transforms and TorchScript are not (use ``nn.MaxPool2d`` there). Everything else (CUDA,
channels-last or non-contiguous inputs, empty tensors, other kernel settings, under
``torch.compile``, which fuses the pool itself) goes to ``F.max_pool2d``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _fast_path(x: Tensor) -> bool:
    return (x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous() and x.is_floating_point()
            and x.numel() > 0 and x.shape[-2] >= 2 and x.shape[-1] >= 2 and not torch.compiler.is_compiling())


def _nchw(t: Tensor) -> Tensor:
    """``t`` with standard NCHW strides. ``.contiguous()`` is not enough: a 1x1 map counts as
    contiguous in both layouts and keeps its channels-last strides."""
    n, c, h, w = t.shape
    if t.stride() == (c * h * w, h * w, w, 1):
        return t
    return t.clone(memory_format=torch.contiguous_format)


class _PoolWithIndices(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out, indices = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), [2, 2], [2, 2])
        indices = _nchw(indices)  # flat h * W + w within each plane, whatever the layout
        ctx.save_for_backward(x, indices)
        return _nchw(out)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # PyTorch's own backward op, itself differentiable in ``grad``: double backward works
        x, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)


def max_pool_2x2(x: Tensor) -> Tensor:
    """``F.max_pool2d(x, 2, 2)``: the same values and input gradient, computed faster on a CPU NCHW
    tensor (see the module docstring)."""
    if not _fast_path(x):
        return F.max_pool2d(x, 2, 2)
    if torch.is_grad_enabled() and x.requires_grad:
        return _PoolWithIndices.apply(x)
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # floor mode: an odd last row/column is dropped
    a, b = x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2]
    c, d = x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2]
    # torch.maximum, not a where() chain that replays the kernel's scan bit for bit: on these
    # strided views its comparisons cost about as much as the NCHW pool itself
    return _nchw(torch.maximum(torch.maximum(a, b), torch.maximum(c, d)))


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2, 2)`` computed by ``max_pool_2x2`` (no parameters: state dicts unchanged)."""

    def __init__(self):
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return max_pool_2x2(x)


def use_fast_pools(features: nn.Sequential) -> nn.Sequential:
    """Replace, in place, every ``nn.MaxPool2d(2, 2)`` of ``features`` (padding 0, dilation 1,
    floor mode) by ``MaxPool2x2``; other pools stay as they are."""
    for i, layer in enumerate(features):
        if type(layer) is nn.MaxPool2d and _is_plain_2x2(layer):
            features[i] = MaxPool2x2()
    return features


def _is_plain_2x2(pool: nn.MaxPool2d) -> bool:
    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return (pair(pool.kernel_size) == (2, 2) and pair(pool.stride) == (2, 2) and pair(pool.padding) == (0, 0)
            and pair(pool.dilation) == (1, 1) and not pool.ceil_mode and not pool.return_indices)
