"""Reading image files: every decodable file as RGB, and dropping the unreadable ones on request."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from .errors import DatasetError

log = logging.getLogger(__name__)
T = TypeVar("T")


def load_rgb(path: Path) -> Image.Image:
    """Decode any PIL-readable file (grayscale, CMYK, palette, PNG named .jpg...) as RGB."""
    try:
        with Image.open(path) as im:
            im.load()  # force the full decode so truncated files fail here
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"cannot decode image {path}: {exc}") from exc


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    return TF.pil_to_tensor(img)  # [3, H, W] uint8


def drop_unreadable(items: Sequence[T], path_of: Callable[[T], Path]) -> list[T]:
    """The items whose image decodes; each dropped one is logged as a warning."""
    kept = []
    for item in items:
        try:
            load_rgb(path_of(item))
            kept.append(item)
        except DatasetError as exc:
            log.warning("dropping unreadable image: %s", exc)
    return kept
