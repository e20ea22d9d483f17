"""The model's input from a batch of images, made on the device the model runs on.

The datasets' standard pipeline leaves each image uint8 (``data/transforms.py``): the workers do
only what must happen per image (decode, resize, crop, flip), and a batch crosses to the device at a
quarter of the bytes of float pixels. :func:`to_model_input` then converts and normalises the whole
batch there with the operations of ``ToDtype(float32, scale=True)`` followed by ``Normalize(mean,
std)``, in that order, so that every value is the one the per-image pipeline gives.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from .transforms import IMAGENET_MEAN, IMAGENET_STD

Normalization = tuple[Sequence[float], Sequence[float]]


def to_model_input(images: Tensor, device: torch.device | str,
                   normalization: Normalization = (IMAGENET_MEAN, IMAGENET_STD),
                   channels_last: bool = False, non_blocking: bool = False) -> Tensor:
    """float32 [B, 3, H, W] on ``device`` from the images [B, 3, H, W] of a batch.

    Integer images (uint8 from the standard pipeline) are moved as they are, then scaled to 0..1
    and normalised with ``normalization`` = (mean, std) on ``device``; float images are taken as
    already normalised (a pipeline that ends in ``Normalize``) and only moved. ``channels_last``
    gives the result that memory format; ``non_blocking`` lets the copy from pinned memory
    overlap the device's work.
    """
    images = images.to(device, non_blocking=non_blocking)
    # the model's layout, before the conversion (the float ops keep it): a uint8 batch arrives as its
    # workers laid it out (data/collate.py), and this is its one transpose, on ``device``
    images = images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if images.is_floating_point():
        return images
    mean, std = normalization
    # in place after the one new tensor of to_dtype: the same values as Normalize(inplace=False)
    return TF.normalize(TF.to_dtype(images, torch.float32, scale=True), list(mean), list(std), inplace=True)


def model_normalization(model) -> Normalization:
    """(mean, std) a model's inputs are normalised with: its ``input_normalization`` (RA-CNN keeps
    the training's), ImageNet's for a model without one."""
    return tuple(getattr(model, "input_normalization", (IMAGENET_MEAN, IMAGENET_STD)))
