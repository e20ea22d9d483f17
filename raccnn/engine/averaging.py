"""An exponential moving average of the model's weights over the alternation (``train.alternate.ema``).

With decay ``d`` > 0 the average starts from the weights the alternation starts with and takes every
optimiser step of an alternating phase in: after the t-th step

    average <- decay_t * average + (1 - decay_t) * weights,    decay_t = min(d, (1 + t) / (10 + t))

(the warm-up keeps the first steps from being drowned by the starting weights). Validation, the
phases' plateau rules, model selection and ``best_alternate.pt`` see the average; training goes on
from the model's own weights, and ``last.pt`` holds both, so a resume continues exactly. Integer
buffers (batch norm's step counter) are not averaged.

Written here rather than with timm's ``ModelEmaV3`` or torch's ``AveragedModel``: both keep a deep
copy of the model as a second module, while the trainer needs the average as a state dict to put into
its one model (compiled, DDP-wrapped) for a validation and a checkpoint, and back again.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class WeightAverage:
    """The average over the phases that ask for one (``ema_decay()`` > 0), from the first one's start."""

    def __init__(self):
        self.decay, self.updates, self.average = 0.0, 0, None

    def decay_at(self, t: int) -> float:
        return min(self.decay, (1 + t) / (10 + t))

    def start(self, model: nn.Module, decay: float) -> None:
        """Start from the model's weights, unless averaging already started or ``decay`` is 0."""
        if self.average is None and decay > 0:
            self.decay, self.updates = decay, 0
            self.average = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, on: bool = True) -> None:
        """Take the model's weights after one more optimiser step in (when ``on``)."""
        if self.average is None or not on:
            return
        self.updates += 1
        state, keys = model.state_dict(), list(self.average)  # state_dict's tensors come detached
        torch._foreach_lerp_([self.average[k] for k in keys], [state[k] for k in keys],
                             1.0 - self.decay_at(self.updates))

    @contextlib.contextmanager
    def applied(self, model: nn.Module, on: bool = True):
        """The model holds the average inside the block (when ``on``) and its own weights after it."""
        if self.average is None or not on:
            yield
            return
        own = {k: v.clone() for k, v in model.state_dict().items() if k in self.average}
        model.load_state_dict(self.average, strict=False)
        try:
            yield
        finally:
            model.load_state_dict(own, strict=False)

    def state_dict(self) -> dict | None:
        return None if self.average is None else {"decay": self.decay, "updates": self.updates,
                                                  "average": self.average}

    def load_state_dict(self, state: dict | None, device: torch.device) -> None:
        self.decay, self.updates, self.average = 0.0, 0, None
        if state is not None:
            self.decay, self.updates = state["decay"], state["updates"]
            self.average = {k: v.to(device) for k, v in state["average"].items()}
