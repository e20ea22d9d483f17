"""RA-CNN losses: cross-entropy at every scale and the inter-scale pairwise ranking loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MARGIN = 0.05  # the rank loss's margin, as in the paper (train.alternate.margin)


def true_class_prob(logits: Tensor, target: Tensor) -> Tensor:
    """p_t: softmax probability of the true class, [B]."""
    return F.softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)


def rank_loss(logits_per_scale: list[Tensor], target: Tensor, margin: float = MARGIN) -> Tensor:
    """Sum over neighbouring scales (s, s+1) of the batch mean of max(0, p_t(s) - p_t(s+1) + margin).

    It asks each finer scale to be more confident in the true class than the coarser one, by at
    least ``margin``. In RA-CNN it trains the APNs (classifiers frozen). Both terms of a pair are
    differentiated, as in the paper's formula: p_t(1) has no gradient then (scale 1 sees the whole
    image), but p_t(2) depends on APN 1's square, so with three scales APN 1 is pushed to raise
    p_t(2) by the (1, 2) hinge and to lower it by the (2, 3) hinge, while the (2, 3) hinge also
    moves both squares through p_t(3).
    """
    if len(logits_per_scale) < 2:
        raise ValueError("rank_loss needs the logits of at least two scales")
    probs = [true_class_prob(logits, target) for logits in logits_per_scale]
    total = probs[0].new_zeros(())
    for coarse, fine in zip(probs[:-1], probs[1:]):
        total = total + (coarse - fine + margin).clamp_min(0).mean()
    return total


def hinge_active(logits_per_scale: list[Tensor], target: Tensor, margin: float = MARGIN) -> Tensor:
    """[n_scales - 1]: for each neighbouring pair (s, s+1), the fraction of the batch whose hinge
    p_t(s) - p_t(s+1) + margin is positive, i.e. the images that give the rank loss a gradient. When
    the softmax saturates (p_t near 1 at every scale) it falls to 0 and the rank loss is silent."""
    probs = [true_class_prob(logits, target).detach() for logits in logits_per_scale]
    return torch.stack([((c - f + margin) > 0).float().mean() for c, f in zip(probs[:-1], probs[1:])])


def scale_ce_losses(logits_per_scale: list[Tensor], target: Tensor, label_smoothing: float = 0.0) -> list[Tensor]:
    """Cross-entropy of each scale's logits (a list; the classifier phase minimises their sum).
    ``label_smoothing`` (``train.label_smoothing`` in training, 0 in validation): the target puts
    1 - eps on the true class and eps spread evenly over all classes (``F.cross_entropy``'s)."""
    return [F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing) for logits in logits_per_scale]
