"""Differentiable crop-and-zoom with a logistic box mask (RA-CNN, Fu et al. 2017, Sec. 3.2).

Coordinates are normalised: x runs rightwards over [0, 1], y downwards over [0, 1], and input pixel
(r, c) has its centre at ((c + 0.5) / W, (r + 0.5) / H). A box is (tx, ty, tl): centre and half side.

    M(x, y) = [s(kW(x - tx + tl)) - s(kW(x - tx - tl))] * [s(kH(y - ty + tl)) - s(kH(y - ty - tl))]

with s the logistic function. Multiplying k by the side in pixels makes k a per-pixel steepness, so
the mask's edge is about one input pixel wide at any resolution. The output pixel (i, j) is the
bilinear sample of ``images * M`` at

    x = tx - tl + (j + 0.5) * 2 tl / out_w,    y = ty - tl + (i + 0.5) * 2 tl / out_h,

with zeros outside the image. The whole batch is computed at once (``masked_zoom``): no Python loop
over images, no custom autograd function (autograd differentiates the formulas exactly).

``grad`` chooses the path by which the boxes receive gradient:
- ``"mask"``: only through M (the paper's analysis; the sampling grid uses detached boxes);
- ``"grid"``: only through the sampling positions (spatial-transformer style);
- ``"both"``: through both;
- ``"caffe"``: the surrogate of the authors' released Caffe layer (``caffe_grad.py``): the forward
  is the same, the boxes get that layer's backward instead of the true gradient.

``impl`` chooses how the same formulas are computed: ``"gather"`` (``masked_zoom``: four gathered
neighbours per output pixel, work proportional to the output; on the CPU the faster when the boxes
receive gradient), ``"grid_sample"`` (torch's ``grid_sample`` on the masked full-resolution image;
the faster on a GPU, docs/speed.md) or ``"auto"``
(``grid_sample`` on CUDA, ``gather`` elsewhere: ``resolve_impl``). Both give the same values and
gradients (tested); ``tools/benchmark.py`` times both on the device at hand.
``compiled_attention_crop`` is the same function through ``torch.compile`` (``model.crop.compile``).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from .caffe_grad import CaffeBoxGrad

EXACT_GRAD_MODES = ("mask", "grid", "both")  # autograd's gradient of the path each selects
GRAD_MODES = (*EXACT_GRAD_MODES, "caffe")
IMPLS = ("auto", "gather", "grid_sample")
K_DEFAULT = 10.0  # mask steepness per input pixel, as in every public port


def box_mask(boxes: Tensor, height: int, width: int, k: float = K_DEFAULT) -> Tensor:
    """Logistic box mask M at every pixel centre, shape [B, 1, H, W], dtype of ``boxes``."""
    tx, ty, tl = boxes[:, 0:1], boxes[:, 1:2], boxes[:, 2:3]
    xs = (torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5) / width
    ys = (torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5) / height
    kx, ky = k * width, k * height
    mx = torch.sigmoid(kx * (xs - (tx - tl))) - torch.sigmoid(kx * (xs - (tx + tl)))  # [B, W]
    my = torch.sigmoid(ky * (ys - (ty - tl))) - torch.sigmoid(ky * (ys - (ty + tl)))  # [B, H]
    return (my[:, :, None] * mx[:, None, :]).unsqueeze(1)


def sampling_grid(boxes: Tensor, out_h: int, out_w: int) -> Tensor:
    """grid_sample grid [B, out_h, out_w, 2] in [-1, 1] (align_corners=False convention)."""
    tx, ty, tl = boxes[:, 0:1], boxes[:, 1:2], boxes[:, 2:3]
    j = (torch.arange(out_w, device=boxes.device, dtype=boxes.dtype) + 0.5) / out_w
    i = (torch.arange(out_h, device=boxes.device, dtype=boxes.dtype) + 0.5) / out_h
    x = tx - tl + j * 2 * tl  # [B, out_w], normalised [0, 1]
    y = ty - tl + i * 2 * tl  # [B, out_h]
    gx = (2 * x - 1)[:, None, :].expand(-1, out_h, -1)
    gy = (2 * y - 1)[:, :, None].expand(-1, -1, out_w)
    return torch.stack((gx, gy), dim=-1)


def attention_crop(
    images: Tensor,
    boxes: Tensor,
    out_size: int | tuple[int, int],
    k: float = K_DEFAULT,
    grad: str = "mask",
    impl: str = "auto",
) -> Tensor:
    """Crop the square ``boxes`` [B, 3] = (tx, ty, tl) out of ``images`` [B, C, H, W] and zoom it
    to ``out_size``; returns [B, C, out_h, out_w] in the dtype of ``images``."""
    if grad not in GRAD_MODES:
        raise ValueError(f"attention_crop: grad must be one of {GRAD_MODES}, got {grad!r}")
    if impl not in IMPLS:
        raise ValueError(f"attention_crop: impl must be one of {IMPLS}, got {impl!r}")
    if images.dim() != 4 or boxes.dim() != 2 or boxes.shape[1] != 3 or boxes.shape[0] != images.shape[0]:
        raise ValueError(
            f"attention_crop: expected images [B, C, H, W] and boxes [B, 3], got "
            f"{tuple(images.shape)} and {tuple(boxes.shape)}"
        )
    mask_boxes = boxes if grad in ("mask", "both") else boxes.detach()
    grid_boxes = boxes if grad in ("grid", "both") else boxes.detach()
    zoom = masked_zoom_grid_sample if resolve_impl(impl, images.device) == "grid_sample" else masked_zoom
    out = zoom(images, mask_boxes, grid_boxes, out_size, k)
    if grad == "caffe" and boxes.requires_grad:
        out = CaffeBoxGrad.apply(out, boxes, images.shape[-2], images.shape[-1])
    return out


def resolve_impl(impl: str, device: torch.device) -> str:
    """The implementation ``impl`` stands for on ``device``: ``"auto"`` is the one measured faster
    there (``tools/benchmark.py``, both crops of a step timed alone; docs/speed.md): ``grid_sample``
    on CUDA, the gathers on the CPU, where they win whenever the boxes learn."""
    if impl == "auto":
        return "grid_sample" if device.type == "cuda" else "gather"
    return impl


@functools.cache
def compiled_attention_crop():
    """``attention_crop`` through ``torch.compile`` (inductor), made once per process: the gathers,
    the weight products and the sums become a few fused loops, forward and backward, where eager
    mode runs each as its own pass over the batch. The same formulas; equal up to float rounding
    (tested). A graph is compiled at the first call of each grad mode, dtype and device; after a
    second batch size the batch dimension is compiled as dynamic."""
    return torch.compile(attention_crop)


def masked_zoom_grid_sample(images: Tensor, mask_boxes: Tensor, grid_boxes: Tensor, out_size,
                            k: float = K_DEFAULT) -> Tensor:
    """``masked_zoom`` through ``grid_sample`` on the masked image (the same numbers up to rounding).
    It streams the whole masked image through memory, forward and backward; on the CPU its backward
    makes it the slower of the two (docs/speed.md)."""
    out_h, out_w = (out_size, out_size) if isinstance(out_size, int) else out_size
    height, width = images.shape[-2:]
    work = torch.promote_types(images.dtype, torch.float32)
    masked = images.to(work) * box_mask(mask_boxes.to(work), height, width, k)
    grid = sampling_grid(grid_boxes.to(work), out_h, out_w)
    out = torch.nn.functional.grid_sample(masked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(images.dtype)


def masked_zoom(images: Tensor, mask_boxes: Tensor, grid_boxes: Tensor, out_size, k: float = K_DEFAULT) -> Tensor:
    """The crop with separate boxes for the mask and for the sampling grid (equal in the forward).

    Exactly ``grid_sample(images * box_mask(mask_boxes), sampling_grid(grid_boxes))`` (bilinear,
    zero padding), computed without the full-resolution masked image: the grid and the mask are
    both separable, so each output pixel needs its four neighbour pixels of ``images`` (gathered)
    and, per axis, two weights = bilinear weight x mask value at that neighbour's centre. That
    keeps the work proportional to the output, not to the input: with ``grid_sample`` on the
    masked image, forward and backward stream the whole [B, C, H, W] image several times, which
    on a CPU made a batch of 64 slower than a loop over single images.

    The two axes' weights are multiplied first into one [B, 1, out_h, out_w] weight per neighbour,
    so each product with the gathered pixels broadcasts over the channels only; weights broadcast
    over rows or columns make the CPU's elementwise kernels slower (docs/speed.md).
    """
    out_h, out_w = (out_size, out_size) if isinstance(out_size, int) else out_size
    b, c, height, width = images.shape
    # The box arithmetic runs in at least fp32: at bf16 a 448-pixel image has no exact pixel centres.
    work = torch.promote_types(images.dtype, torch.float32)
    mask_boxes, grid_boxes = mask_boxes.to(work), grid_boxes.to(work)
    x0, x1, ax0, ax1 = _axis_taps(mask_boxes, grid_boxes, 0, width, out_w, k)  # [B, out_w]
    y0, y1, ay0, ay1 = _axis_taps(mask_boxes, grid_boxes, 1, height, out_h, k)  # [B, out_h]
    flat = images.reshape(b, c, height * width)

    def tap(rows: Tensor, cols: Tensor, wy: Tensor, wx: Tensor) -> Tensor:
        """Pixels (rows[i], cols[j]) times their weight wy[i] * wx[j] -> [B, C, out_h, out_w]."""
        index = (rows[:, :, None] * width + cols[:, None, :]).reshape(b, 1, -1).expand(b, c, -1)
        pixels = flat.gather(2, index).reshape(b, c, out_h, out_w).to(work)
        return pixels * (wy[:, :, None] * wx[:, None, :]).unsqueeze(1)

    out = tap(y0, x0, ay0, ax0) + tap(y0, x1, ay0, ax1) + tap(y1, x0, ay1, ax0) + tap(y1, x1, ay1, ax1)
    return out.to(images.dtype)


def _axis_taps(mask_boxes: Tensor, grid_boxes: Tensor, axis: int, size: int, out: int, k: float):
    """Along one axis (0 = x, 1 = y): for each output index, its two neighbour pixels (clamped
    indices) and their weights: bilinear weight (from ``grid_boxes``) times the mask's factor at
    the neighbour's centre (from ``mask_boxes``), zero for a neighbour outside the image."""
    centre, half = grid_boxes[:, axis : axis + 1], grid_boxes[:, 2:3]
    steps = (torch.arange(out, device=grid_boxes.device, dtype=grid_boxes.dtype) + 0.5) / out
    pos = (centre - half + steps * 2 * half) * size - 0.5  # continuous pixel coordinate, [B, out]
    first = torch.floor(pos.detach())
    frac = pos - first  # carries the gradient of the sampling position
    i0 = first.long()
    i1 = i0 + 1
    centre, half = mask_boxes[:, axis : axis + 1], mask_boxes[:, 2:3]

    def weight(i: Tensor, bilinear: Tensor) -> Tensor:
        x = (i.to(mask_boxes.dtype) + 0.5) / size
        m = torch.sigmoid(k * size * (x - (centre - half))) - torch.sigmoid(k * size * (x - (centre + half)))
        return bilinear * m * ((i >= 0) & (i < size)).to(m.dtype)

    return i0.clamp(0, size - 1), i1.clamp(0, size - 1), weight(i0, 1 - frac), weight(i1, frac)
