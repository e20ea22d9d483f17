"""One optimisation step: the backward passes (through AMP's fp16 loss scaler when there is one)
that accumulate its gradient, then the gradient norm of the phase's parameters, the divergence
guard and the optimiser's step (with ``train.accumulate`` > 1 after several batches, ``accumulate.py``).

A non-finite loss or gradient stops the run at once with a ``DivergenceError`` that names the
phase, the step and the config key to lower; nothing of that step is applied. Under the fp16 loss
scaler an infinite gradient is the scaler's business (it skips the step and lowers the scale), so
only the loss counts there, and ``MAX_SKIPPED_STEPS`` skips in a row count as a divergence.
"""
from __future__ import annotations

import torch

from ..errors import DivergenceError

MAX_SKIPPED_STEPS = 20  # consecutive fp16 steps the loss scaler may skip before the run counts as diverged


class OptimizerStep:
    def __init__(self, scaler: torch.amp.GradScaler | None):
        self.scaler = scaler
        self.skipped = 0  # steps the scaler skipped in a row

    def backward(self, loss) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def __call__(self, loss, optimizer, scheduler, terms: dict, phase, progress) -> None:
        """The step of ``optimizer`` on the gradient accumulated since its ``zero_grad`` (``loss`` the
        mean loss it came from), then of ``scheduler``; counts it in ``progress.step`` and puts the
        gradient norm into ``terms`` ("train/grad_norm")."""
        where = f"{phase.label}, epoch {progress.epoch + 1}, step {progress.step + 1}"
        terms["train/grad_norm"] = self.step(loss, optimizer, terms, where, "train." + ".".join(phase.section) + ".lr",
                                             phase.settings["lr"])
        scheduler.step()
        progress.step += 1

    def step(self, loss, optimizer, terms: dict, where: str, lr_key: str, lr: float):
        """``optimizer``'s step; the gradient norm. ``where``, ``lr_key`` and ``lr`` describe the step
        for a divergence's message."""
        if self.scaler is None:
            norm = self.checked_norm(loss, optimizer, terms, where, lr_key, lr)
            optimizer.step()
            return norm
        self.scaler.unscale_(optimizer)
        norm = self.checked_norm(loss, optimizer, terms, where, lr_key, lr)
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        self.skipped = self.skipped + 1 if self.scaler.get_scale() < scale else 0
        if self.skipped >= MAX_SKIPPED_STEPS:
            raise diverged(where, f"the fp16 loss scaler skipped {self.skipped} steps in a row (scale now "
                                  f"{self.scaler.get_scale():.3g}; {shown(terms)})", lr_key, lr)
        return norm

    def checked_norm(self, loss, optimizer, terms, where, lr_key, lr):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else loss.new_zeros(())
        if torch.isfinite(loss.detach().float() + (0 if self.scaler else norm)):  # one host sync for both
            return norm
        raise diverged(where, f"loss {loss.item():.4g} ({shown(terms)}), gradient norm {norm.item():.4g}", lr_key, lr)


def shown(terms: dict) -> str:
    return ", ".join(f"{k} {v.item():.4g}" for k, v in terms.items())


def diverged(where: str, what: str, lr_key: str, lr: float) -> DivergenceError:
    return DivergenceError(f"training diverged in {where}: {what}. last.pt and the best checkpoints hold the last "
                           f"finite epoch; lower {lr_key} (now {lr:g}) and resume with --resume auto")
