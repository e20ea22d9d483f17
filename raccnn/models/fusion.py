"""Fusion heads: one prediction from scales 1..n (``model.fusion``).

- ``features`` (``FeatureFusion``): a linear classifier over the concatenated pooled features of
  the scales, trained with cross-entropy on the training split while the scales stay frozen (the
  paper's fusion layer).
- ``log_probs`` (``LogProbFusion``): sum_s w_s log softmax(logits_s), one weight w_s >= 0 per
  scale (n parameters), fitted on the validation split by minimising the NLL, plus
  ``train.fusion.l2`` * sum_s w_s^2 (``fit_log_prob_weights``).

Why the second exists: after the alternation every scale is nearly perfect on the training images
(FG-Synth: 480 of them), so a head trained there cannot learn that a scale is weak on new images.
Weights fitted on held-out images are the classic remedy for stacking overfitted members. On the
default FG-Synth run neither head wins outside the seed noise (docs/results.md, "The fusion head";
``experiments/grids/fusion.yaml``), so ``features``, the paper's, is the default.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FUSIONS = ("features", "log_probs")


def fusion_names(n_scales: int) -> list[str]:
    """Names of the fusion heads over scales 1..n for n = 2..n_scales: "12", "123", ..."""
    return ["".join(str(s) for s in range(1, n + 1)) for n in range(2, n_scales + 1)]


class FeatureFusion(nn.Linear):
    """Linear classifier over the concatenated features of scales 1..n."""

    def __init__(self, n: int, channels: int, num_classes: int):
        super().__init__(n * channels, num_classes)
        self.n = n

    def forward(self, features: list[Tensor], logits: list[Tensor]) -> Tensor:
        return super().forward(torch.cat(features[: self.n], dim=1))


class LogProbFusion(nn.Module):
    """sum_s w_s log softmax(logits_s) over scales 1..n, w = softplus(raw) >= 0; every w_s starts
    at 1 (the product of the scales' distributions)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.raw = nn.Parameter(torch.full((n,), math.log(math.e - 1.0)))  # softplus(raw) = 1

    def weights(self) -> Tensor:
        return F.softplus(self.raw)

    def forward(self, features: list[Tensor], logits: list[Tensor]) -> Tensor:
        w = self.weights()
        return sum(w[s] * F.log_softmax(logits[s].float(), dim=1) for s in range(self.n))


def build_fusion(kind: str, n_scales: int, channels: int, num_classes: int) -> nn.ModuleDict:
    if kind not in FUSIONS:
        raise ValueError(f"unknown fusion {kind!r}; choose one of {list(FUSIONS)}")
    return nn.ModuleDict({name: FeatureFusion(len(name), channels, num_classes) if kind == "features"
                          else LogProbFusion(len(name)) for name in fusion_names(n_scales)})


def fit_log_prob_weights(head: LogProbFusion, logits: list[Tensor], labels: Tensor, max_iter: int = 100,
                         l2: float = 0.0) -> float:
    """Fit ``head``'s weights in place to minimise the mean NLL of ``labels`` [N] under the fused
    prediction of ``logits`` (n x [N, K], held-out images) plus ``l2 * sum_s w_s^2``; returns the
    final NLL (without the penalty). Deterministic: full-batch L-BFGS from the head's current weights.

    With ``l2 = 0`` the fit has no minimum when some weighting classifies every held-out image
    right (small validation splits of strong scales): the NLL falls towards 0 as the weights grow,
    and their ratios are wherever L-BFGS stops. A positive ``l2`` (ridge) gives one minimum."""
    log_probs = [F.log_softmax(x.detach().float(), dim=1) for x in logits[: head.n]]

    def nll() -> Tensor:
        w = head.weights()
        return F.cross_entropy(sum(w[s] * log_probs[s] for s in range(head.n)), labels)

    def objective() -> Tensor:
        return nll() + l2 * head.weights().square().sum() if l2 else nll()

    opt = torch.optim.LBFGS([head.raw], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    frozen = not head.raw.requires_grad
    head.raw.requires_grad_(True)
    try:
        with torch.enable_grad():
            opt.step(closure)
            return float(nll().detach())
    finally:
        head.raw.requires_grad_(not frozen)
