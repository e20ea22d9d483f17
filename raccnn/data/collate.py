"""Batching the samples of the standard pipeline, in the layout the workers made them.

A decoded image is stored pixel by pixel, the three colours of a pixel side by side (PIL's layout);
the uint8 image of the standard pipeline is a [3, H, W] view of those bytes (channels-last strides),
and the resize and crop keep that layout. ``default_collate`` stacks such views into a contiguous
[B, 3, H, W] batch, a per-pixel transpose that costs a worker more than the copy itself.
:func:`collate_samples` stacks uint8 images as they are laid out, into a [B, 3, H, W] view with
channels-last strides, and :func:`raccnn.data.device_input.to_model_input` gives the batch the
model's layout on the device, once per batch. The values are the same; only the strides differ.

Float images (a pipeline that ends in ``Normalize``) are the model's input already and only moved
to the device, so they are stacked as ``default_collate`` stacks them.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import default_collate


def pixel_major(image) -> bool:
    """True for a uint8 [3, H, W] image whose colours are its innermost dimension (channels-last)."""
    return (isinstance(image, Tensor) and image.dtype == torch.uint8 and image.dim() == 3
            and image.stride(0) == 1 and image.shape[0] > 1)


def collate_samples(samples: list):
    """``default_collate``, except that a batch of pixel-major uint8 images (``pixel_major``) is
    stacked in that layout: ``batch["image"]`` is then [B, 3, H, W] with channels-last strides. In a
    DataLoader worker the stacked batch is still written straight into shared memory, as
    ``default_collate`` does."""
    first = samples[0]
    if not (isinstance(first, dict) and all(pixel_major(s.get("image")) for s in samples)):
        return default_collate(samples)
    batch = default_collate([{**s, "image": s["image"].permute(1, 2, 0)} for s in samples])  # [B, H, W, 3]
    batch["image"] = batch["image"].permute(0, 3, 1, 2)
    return batch
