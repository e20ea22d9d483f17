"""Keeping a split in memory, so that an epoch reads no files and repeats no fixed work.

Modes, chosen per split by ``build.py`` from ``data.cache``:

    none      every read decodes the file and runs the transform.
    decoded   every image is decoded once, when the dataset opens, and kept as uint8 [3, H, W];
              the transform (random augmentation included) still runs on every read.
    samples   every item is decoded and transformed once and the result kept; only for a
              deterministic transform (the evaluation pipeline).

The cache is filled when the dataset opens, in the process that opens it, so the DataLoader
workers forked later share it instead of each refilling their own.
"""
from __future__ import annotations

from typing import Callable

import torch

CACHE_MODES = ("none", "decoded", "samples")


class ItemCache:
    """Item ``i`` of a dataset: ``build(i, decode(i))``, with ``decode`` (file -> uint8 image) or
    both steps done once up front, as ``mode`` says."""

    def __init__(self, mode: str, n: int, decode: Callable[[int], torch.Tensor],
                 build: Callable[[int, torch.Tensor], dict]):
        if mode not in CACHE_MODES:
            raise ValueError(f"cache mode must be one of {CACHE_MODES}, got {mode!r}")
        self.mode, self.decode, self.build = mode, decode, build
        self.images = [decode(i) for i in range(n)] if mode == "decoded" else None
        self.samples = [build(i, decode(i)) for i in range(n)] if mode == "samples" else None

    def __getitem__(self, i: int) -> dict:
        if self.samples is not None:  # copies: a caller that edits a sample in place cannot alter the cache
            return {k: v.clone() for k, v in self.samples[i].items()}
        return self.build(i, self.images[i] if self.images is not None else self.decode(i))

    def nbytes(self) -> int:
        """Memory held, in bytes."""
        tensors = self.images or [t for s in self.samples or [] for t in s.values()]
        return sum(t.numel() * t.element_size() for t in tensors)
