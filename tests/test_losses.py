import math

import pytest
import torch

from raccnn.losses import rank_loss, scale_ce_losses, true_class_prob


def logits_for(probs):
    """Logits whose softmax is exactly ``probs`` (rows sum to 1)."""
    return torch.tensor(probs, dtype=torch.float64).log()


def test_rank_loss_hand_computed_two_scales():
    s1 = logits_for([[0.6, 0.4], [0.2, 0.8]])
    s2 = logits_for([[0.5, 0.5], [0.1, 0.9]])
    target = torch.tensor([0, 1])
    # image 0: p1 = 0.6, p2 = 0.5 -> max(0, 0.6 - 0.5 + 0.05) = 0.15
    # image 1: p1 = 0.8, p2 = 0.9 -> max(0, 0.8 - 0.9 + 0.05) = 0
    assert rank_loss([s1, s2], target).item() == pytest.approx((0.15 + 0.0) / 2)


def test_rank_loss_hand_computed_three_scales_sums_pairs():
    s1 = logits_for([[0.7, 0.2, 0.1]])
    s2 = logits_for([[0.5, 0.3, 0.2]])
    s3 = logits_for([[0.52, 0.28, 0.2]])
    target = torch.tensor([0])
    # (0.7 - 0.5 + 0.1) + (0.5 - 0.52 + 0.1) with margin 0.1
    assert rank_loss([s1, s2, s3], target, margin=0.1).item() == pytest.approx(0.3 + 0.08)


def test_rank_loss_zero_when_finer_scales_more_confident_by_margin():
    s1 = logits_for([[0.3, 0.7]])
    s2 = logits_for([[0.36, 0.64]])
    s3 = logits_for([[0.5, 0.5]])
    target = torch.tensor([0])
    assert rank_loss([s1, s2, s3], target, margin=0.05).item() == 0.0
    # but a finer scale less than a margin ahead still costs
    s2b = logits_for([[0.33, 0.67]])
    assert rank_loss([s1, s2b], target, margin=0.05).item() == pytest.approx(0.02)


def test_rank_loss_gradient_pushes_finer_scale_up():
    s1 = logits_for([[0.6, 0.4]])
    s2 = logits_for([[0.5, 0.5]]).requires_grad_(True)
    rank_loss([s1, s2], torch.tensor([0])).backward()
    assert s2.grad[0, 0] < 0 < s2.grad[0, 1]  # descent raises the true class's logit


def test_rank_loss_needs_two_scales():
    with pytest.raises(ValueError, match="at least two"):
        rank_loss([torch.zeros(1, 2)], torch.tensor([0]))


def test_true_class_prob_and_ce():
    logits = logits_for([[0.25, 0.75], [0.9, 0.1]])
    target = torch.tensor([1, 1])
    torch.testing.assert_close(true_class_prob(logits, target), torch.tensor([0.75, 0.1], dtype=torch.float32))
    ce = scale_ce_losses([logits, logits], target)
    assert len(ce) == 2
    assert ce[0].item() == pytest.approx(-(math.log(0.75) + math.log(0.1)) / 2, rel=1e-5)


def test_hinge_active_fraction_on_a_hand_made_batch():
    from raccnn.losses import hinge_active
    # two classes; logits chosen so that p_t = softmax(...)[target] is known exactly
    def logits_for(p):  # [B, 2] with softmax(.)[:, 0] == p
        p = torch.tensor(p)
        return torch.stack([torch.log(p), torch.log(1 - p)], 1)
    target = torch.zeros(4, dtype=torch.long)
    s1 = logits_for([0.50, 0.50, 0.90, 0.20])
    s2 = logits_for([0.60, 0.52, 0.80, 0.99])  # p1 - p2 + 0.05: -0.05, +0.03, +0.15, -0.74
    s3 = logits_for([0.60, 0.52, 0.80, 0.99])  # equal to scale 2: every hinge at +0.05 is active
    active = hinge_active([s1, s2, s3], target, margin=0.05)
    assert active.tolist() == [0.5, 1.0]
    # a saturated softmax: p_t = 1 at every scale leaves exactly the margin, active only if margin > 0
    sat = logits_for([1 - 1e-7] * 4)
    assert hinge_active([sat, sat], target, margin=0.0).tolist() == [0.0]


def _log(p):
    return torch.tensor(p, dtype=torch.float64).log()


def test_rank_loss_differentiates_both_terms_of_a_pair():
    """d/dz of p_t = softmax(z)_t is p_t (1{k = t} - p_k): the coarse scale (p = 0.6) is pushed
    down with p(1 - p) = 0.24, the fine one (p = 0.5) up with 0.25; the hinge is active."""
    coarse, fine = _log([[0.6, 0.4]]).requires_grad_(True), _log([[0.5, 0.5]]).requires_grad_(True)
    rank_loss([coarse, fine], torch.tensor([0])).backward()
    torch.testing.assert_close(coarse.grad, torch.tensor([[0.24, -0.24]], dtype=torch.float64))
    torch.testing.assert_close(fine.grad, torch.tensor([[-0.25, 0.25]], dtype=torch.float64))


def test_each_scale_gets_the_cross_entropy_of_its_own_logits():
    ce = scale_ce_losses([_log([[0.25, 0.75]]), _log([[0.9, 0.1]])], torch.tensor([1]))
    assert [c.item() for c in ce] == pytest.approx([-math.log(0.75), -math.log(0.1)], rel=1e-6)
