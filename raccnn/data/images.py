"""Reading image files: every decodable file as 8-bit RGB.

A camera stores a photo taken sideways as it was sensed, with an EXIF orientation tag saying how to
turn it upright; viewers apply it. ``load_rgb`` applies it too (``exif_transpose=True``), as for new
images (tools/predict.py) and folder datasets, which have no annotations. A dataset whose boxes or
part locations are given in the stored pixels (CUB, Stanford Dogs and Cars, FGVC-Aircraft, NABirds,
FG-Synth) reads the stored orientation instead
(``exif_transpose=False``), so its annotations stay on the pixels they were drawn on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as TF

from ..errors import DatasetError


def load_rgb(path: Path, exif_transpose: bool = True) -> Image.Image:
    """Decode any PIL-readable file (grayscale, 16-bit, CMYK, palette, PNG named .jpg...) as RGB,
    turned upright as its EXIF orientation says unless ``exif_transpose`` is False."""
    try:
        with Image.open(path) as im:
            im.load()  # force the full decode so truncated files fail here
            if exif_transpose:
                ImageOps.exif_transpose(im, in_place=True)
            if im.mode.startswith("I"):
                im = _wide_gray_to_8bit(im)
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            return im if im.mode == "RGB" else im.convert("RGB")  # convert would copy an RGB image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"cannot decode image {path}: {exc}") from exc


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    return TF.pil_to_tensor(img)  # [3, H, W] uint8


def _wide_gray_to_8bit(im: Image.Image) -> Image.Image:
    """16-bit grayscale (mode "I;16*", or "I" from a 16-bit PNG) scaled to 0..255 by 255/65535.
    PIL's own convert clips instead, turning almost every pixel of a 16-bit photo white. An "I"
    image whose values all fit in 8 bits is kept as it is."""
    a = np.asarray(im).astype(np.float64)
    if im.mode.startswith("I;16") or a.max(initial=0) > 255:
        a = a / 257.0  # 65535 / 255
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
