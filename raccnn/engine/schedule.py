"""The learning-rate schedule of a phase: an optional linear warmup, then a cosine down to zero.

Every phase starts a new optimiser and schedule (``Trainer.start_phase``) over its maximum number of
optimiser steps, ``T`` = max epochs x optimiser steps per epoch. Without warmup
(``train.<phase>.warmup_epochs`` = 0, the default) the schedule is torch's ``CosineAnnealingLR``
over ``T`` steps, as it always was. With warmup, the first ``W`` = ceil(warmup_epochs x steps per
epoch) steps (at most ``T`` - 1) rise linearly from ``train.warmup_factor`` x lr to lr
(``LinearLR``), and the cosine runs over the remaining ``T`` - ``W`` steps (``SequentialLR``):
the ``k``-th step (from 0) uses

    lr x (f + (1 - f) x k / W)                       for k < W
    lr x (1 + cos(pi x (k - W) / (T - W))) / 2        for k >= W

Both schedulers are torch's, so their state goes into ``last.pt`` with the rest and a resumed run,
mid-warmup or not, continues with the same learning rates.
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total: int) -> int:
    """The optimiser steps of the warmup: whole steps, covering ``warmup_epochs``, shorter than the phase."""
    if warmup_epochs <= 0:
        return 0
    return max(0, min(total - 1, math.ceil(warmup_epochs * steps_per_epoch)))


def build_schedule(optimizer: torch.optim.Optimizer, max_epochs: int, steps_per_epoch: int,
                   warmup_epochs: float = 0.0, warmup_factor: float = 1e-3) -> LRScheduler:
    """The phase's schedule over ``max_epochs`` x ``steps_per_epoch`` optimiser steps (module docstring)."""
    total = max(1, max_epochs * steps_per_epoch)
    warmup = warmup_steps(warmup_epochs, steps_per_epoch, total)
    if warmup == 0:
        return CosineAnnealingLR(optimizer, T_max=total)
    rise = LinearLR(optimizer, start_factor=warmup_factor, end_factor=1.0, total_iters=warmup)
    decay = CosineAnnealingLR(optimizer, T_max=total - warmup)
    return SequentialLR(optimizer, [rise, decay], milestones=[warmup])


def base_lrs(scheduler: LRScheduler) -> list[float]:
    """The learning rates the schedule is relative to (the phase's lr in each parameter group)."""
    return list(getattr(scheduler, "_schedulers", [scheduler])[0].base_lrs)


def rescale_schedule(optimizer: torch.optim.Optimizer, scheduler: LRScheduler, new: float) -> None:
    """Give the schedule another base lr, keeping its position: every step's lr is the base lr times
    a factor of the step alone (warmup and cosine), so the current lr is scaled by new / old and
    every scheduler of the chain gets the new base (the cosine starts from it after a warmup)."""
    for group, old in zip(optimizer.param_groups, base_lrs(scheduler)):
        if old != new and old > 0:
            group["lr"] *= new / old
            group["initial_lr"] = new
    for part in getattr(scheduler, "_schedulers", [scheduler]):
        part.base_lrs = [new] * len(part.base_lrs)
