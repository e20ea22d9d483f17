"""The box gradient of RA-CNN's released Caffe ``AttentionCrop`` layer, as a surrogate backward.

The authors' layer does not differentiate its crop. Its forward is a hard crop and a resize; its
backward gives the box (a, b, c) = (centre x, centre y, half side), in input pixels, the gradient

    dL/da = sum_{ch, i, j} w[ch, i, j] * (dH(x_j - (a - c)) - dH(x_j - (a + c))) * Fy_i
    dL/db = sum_{ch, i, j} w[ch, i, j] * (dH(y_i - (b - c)) - dH(y_i - (b + c))) * Fx_j
    dL/dc = sum_{ch, i, j} w[ch, i, j] * (-[(dH(y_i - (b - c)) + dH(y_i - (b + c))) * Fx_j
                                         + (dH(x_j - (a - c)) + dH(x_j - (a + c))) * Fy_i] + 0.005)

over the output pixels (i, j) of every channel ch, with

    w[ch, i, j] = |g[ch, i, j]| / max_{i, j} |g[ch]| * 1e-7     (g: the loss gradient of the crop),
    x_j = a - c + 2 j c / out_w,   y_i = b - c + 2 i c / out_h,
    H(z) = 1 / (1 + exp(-0.05 z)),  dH = H',  Fx_j = H(x_j - (a - c)) - H(x_j - (a + c)),  Fy_i likewise.

What this signal is: only the magnitude of the crop's gradient enters (its sign is dropped), each
channel's map is normalised to a maximum of 1e-7, the mask's steepness is 0.05 per pixel (not the
forward's), the expressions for a and b are the derivatives with respect to the pixel position
rather than the box (the negative of the true dF/da, dF/db), and every weighted pixel adds 0.005 to
the half side's gradient, so the square shrinks wherever the crop's gradient is non-zero.

``CaffeBoxGrad`` applies it with raccnn's own forward: the crop is computed with detached boxes (the
same values as every other ``grad`` mode; the images keep their exact gradient), and the boxes,
in normalised coordinates, receive the gradient above through the chain rule a = tx W, b = ty H,
c = tl W along x and tl H along y (for a square image: W times the pixel gradient). The layer's
code is the reference for this module; its constants are the three below.
"""
from __future__ import annotations

import torch
from torch import Tensor

STEEPNESS = 0.05  # the surrogate mask's logistic steepness, per input pixel
SCALE = 1e-7  # what each channel's largest |gradient| is normalised to
SHRINK = 0.005  # added to the half side's gradient at every weighted output pixel


def caffe_box_grad(grad_out: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """The surrogate gradient [B, 3] of normalised boxes (tx, ty, tl) from the crop's output
    gradient ``grad_out`` [B, C, out_h, out_w], for images of ``height`` x ``width`` pixels."""
    _, _, out_h, out_w = grad_out.shape
    box_dtype = boxes.dtype
    dtype = torch.promote_types(grad_out.dtype, torch.float32)
    g = grad_out.detach().to(dtype).abs()
    peak = g.amax(dim=(2, 3), keepdim=True)
    w = torch.where(peak > 0, g / torch.where(peak > 0, peak, 1) * SCALE, g).sum(1)  # [B, out_h, out_w]

    boxes = boxes.detach().to(dtype)
    a, bb = boxes[:, 0:1] * width, boxes[:, 1:2] * height
    cx, cy = boxes[:, 2:3] * width, boxes[:, 2:3] * height
    x = a - cx + 2 * torch.arange(out_w, device=g.device, dtype=dtype) * cx / out_w  # [B, out_w]
    y = bb - cy + 2 * torch.arange(out_h, device=g.device, dtype=dtype) * cy / out_h  # [B, out_h]

    def h(z):
        return torch.sigmoid(STEEPNESS * z)

    def dh(z):
        s = torch.sigmoid(STEEPNESS * z)
        return STEEPNESS * s * (1 - s)

    fx, fy = h(x - (a - cx)) - h(x - (a + cx)), h(y - (bb - cy)) - h(y - (bb + cy))
    dx, dy = dh(x - (a - cx)) - dh(x - (a + cx)), dh(y - (bb - cy)) - dh(y - (bb + cy))
    sx, sy = dh(x - (a - cx)) + dh(x - (a + cx)), dh(y - (bb - cy)) + dh(y - (bb + cy))

    grad_a = (w * fy[:, :, None] * dx[:, None, :]).sum((1, 2))
    grad_b = (w * dy[:, :, None] * fx[:, None, :]).sum((1, 2))
    grad_cx = -(w * fy[:, :, None] * sx[:, None, :]).sum((1, 2))  # the half side's x part
    grad_cy = -(w * sy[:, :, None] * fx[:, None, :]).sum((1, 2))  # and its y part
    grad_c0 = SHRINK * w.sum((1, 2))
    grad_tl = grad_cx * width + grad_cy * height + grad_c0 * (width + height) / 2
    return torch.stack((grad_a * width, grad_b * height, grad_tl), dim=1).to(box_dtype)


class CaffeBoxGrad(torch.autograd.Function):
    """Identity on the crop ``out`` in the forward; in the backward the crop's gradient passes on
    unchanged (to the images, through the detached-box crop that made ``out``) and the boxes get
    ``caffe_box_grad``."""

    @staticmethod
    def forward(ctx, out: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
        ctx.save_for_backward(boxes)
        ctx.size = (height, width)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (boxes,) = ctx.saved_tensors
        box_grad = caffe_box_grad(grad_out, boxes, *ctx.size) if ctx.needs_input_grad[1] else None
        return grad_out, box_grad, None, None
