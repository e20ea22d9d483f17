"""The learning-rate schedule of a phase: a cosine from the phase's lr to 0 over its maximum number
of steps (``torch.optim.lr_scheduler.CosineAnnealingLR``), stepped once per optimiser step."""
from __future__ import annotations

import torch


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))


def rescale_lr(optimizer: torch.optim.Optimizer, scheduler, lr: float) -> None:
    """After a resume: when the config now gives the phase another lr (e.g. after a divergence),
    scale the schedule to it, keeping its position (the cosine's shape is relative)."""
    for group, old in zip(optimizer.param_groups, scheduler.base_lrs):
        if old != lr and old > 0:
            group["lr"] *= lr / old
            group["initial_lr"] = lr
    scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
