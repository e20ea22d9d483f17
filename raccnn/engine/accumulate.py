"""Gradient accumulation (``train.accumulate`` = N): one optimiser step every N batches.

The batches of an epoch are cut into groups of N, in order; the last group of an epoch may be
shorter, and it is stepped on, not dropped. Each batch's loss (a mean over its images) is weighted
by its images / the group's images before its backward pass, so the summed gradient of a group is
the gradient of the mean loss over every image the group saw: the gradient one batch of the
group's images would give. That holds exactly for a model without batch statistics; BatchNorm in
train mode normalises each batch by its own mean and variance (and updates its running statistics
once per batch), so with BN layers training, N batches of B differ from one batch of N x B.

The optimiser, the learning-rate schedule, the fp16 loss scaler (its unscale, step and update) and
the finiteness check act once per group, at its last batch; so does ``progress.step``. Under
DistributedDataParallel only that last batch's backward pass all-reduces (the others run inside
``no_sync``, accumulating locally), and a stop on a signal is taken at group ends only, so a
resumed epoch starts at the beginning of a group.
"""
from __future__ import annotations

import contextlib
import math

from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


def optimizer_steps(batches: int, every: int) -> int:
    """Optimiser steps of an epoch of ``batches`` batches (a last, shorter group counts)."""
    return math.ceil(batches / every)


class Accumulation:
    """The groups of one epoch: ``sizes`` are the images of its batches in order (the loader's rule:
    full batches of ``batch_size``, the last one holding the rest unless dropped)."""

    def __init__(self, every: int, sizes: list[int]):
        self.every, self.sizes = every, list(sizes)

    @classmethod
    def of(cls, loader, every: int) -> Accumulation:
        n, size = len(loader.sampler), loader.batch_size
        return cls(every, [min(size, n - i * size) for i in range(len(loader))])

    def group(self, i: int) -> range:
        """The batches (indices in the epoch) of batch ``i``'s group."""
        start = i - i % self.every
        return range(start, min(start + self.every, len(self.sizes)))

    def starts(self, i: int) -> bool:
        return i % self.every == 0

    def ends(self, i: int) -> bool:
        """Whether the optimiser steps after batch ``i``."""
        return i == self.group(i)[-1]

    def group_images(self, i: int) -> int:
        return sum(self.sizes[j] for j in self.group(i))

    def weighted(self, loss: Tensor, i: int) -> Tensor:
        """Batch ``i``'s loss weighted by its share of its group's images (unchanged alone in a group)."""
        if len(self.group(i)) == 1:
            return loss
        return loss * (self.sizes[i] / self.group_images(i))

    def sync(self, step: nn.Module, i: int):
        """The context of batch ``i``'s forward and backward pass: DDP all-reduces at group ends only."""
        if isinstance(step, DistributedDataParallel) and not self.ends(i):
            return step.no_sync()
        return contextlib.nullcontext()
