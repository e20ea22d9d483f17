"""The fusion heads (raccnn/models/fusion.py): formulas, the fit on held-out outputs, the model's use."""
import math

import pytest
import torch
import torch.nn.functional as F

from raccnn.models import build_racnn
from raccnn.config import load_config
from raccnn.models.fusion import FeatureFusion, LogProbFusion, build_fusion, fit_log_prob_weights


def test_log_prob_fusion_is_the_weighted_sum_of_log_softmaxes():
    head = LogProbFusion(2)
    assert torch.allclose(head.weights(), torch.ones(2))  # starts as the product of the two distributions
    logits = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    with torch.no_grad():
        head.raw.copy_(torch.log(torch.expm1(torch.tensor([0.5, 2.0]))))  # softplus^-1: weights 0.5, 2
    # by hand: log softmax([2, 0]) = [-log(1 + e^-2), -2 - log(1 + e^-2)], log softmax([0, 1]) = [-1 - log(1 + e^-1), -log(1 + e^-1)]
    a, b = math.log1p(math.exp(-2)), math.log1p(math.exp(-1))
    expected = torch.tensor([[0.5 * -a + 2 * (-1 - b), 0.5 * (-2 - a) + 2 * -b]])
    out = head([None, None], logits)  # features are not used
    assert torch.allclose(out, expected, atol=1e-6)
    # a third scale beyond the head's n is ignored
    assert torch.allclose(head([None] * 3, logits + [torch.tensor([[9.0, -9.0]])]), expected, atol=1e-6)


def test_feature_fusion_is_a_linear_layer_over_the_concatenated_features():
    torch.manual_seed(0)
    head = FeatureFusion(2, 3, 4)
    f = [torch.randn(5, 3) for _ in range(3)]
    assert torch.allclose(head(f, None), torch.cat(f[:2], 1) @ head.weight.T + head.bias)
    with pytest.raises(ValueError, match="unknown fusion 'mean'"):
        build_fusion("mean", 3, 3, 4)
    assert list(build_fusion("log_probs", 3, 3, 4)) == ["12", "123"]


def test_fit_puts_the_weight_on_the_informative_scale():
    torch.manual_seed(0)
    n, k = 400, 5
    labels = torch.randint(0, k, (n,))
    right = F.one_hot(labels, k).float() * 3.0 + 0.5 * torch.randn(n, k)  # mostly right
    noise = 4.0 * torch.randn(n, k)  # confident and uninformative
    head = LogProbFusion(2)
    start = F.cross_entropy(head(None, [right, noise]), labels).item()
    nll = fit_log_prob_weights(head, [right, noise], labels)
    w = head.weights().detach()
    assert nll < start and nll == pytest.approx(F.cross_entropy(head(None, [right, noise]), labels).item(), rel=1e-6)
    assert w[0] > 0.5 and w[1] < 0.1 * w[0], w
    # the NLL is at a minimum: nudging either weight does not lower it
    for s in range(2):
        for step in (-0.02, 0.02):
            ww = w.clone()
            ww[s] += step
            fused = ww[0] * F.log_softmax(right, 1) + ww[1] * F.log_softmax(noise, 1)
            assert F.cross_entropy(fused, labels).item() >= nll - 1e-5
    # deterministic: a second fit from the same start gives the same weights
    again = LogProbFusion(2)
    fit_log_prob_weights(again, [right, noise], labels)
    assert torch.equal(again.weights(), head.weights())
    # a frozen head (requires_grad off, as outside the fusion phase) is fitted the same and stays frozen
    frozen = LogProbFusion(2).requires_grad_(False)
    fit_log_prob_weights(frozen, [right, noise], labels)
    assert torch.equal(frozen.weights(), head.weights()) and not frozen.raw.requires_grad


def test_the_model_builds_the_configured_fusion():
    for kind, cls in (("features", FeatureFusion), ("log_probs", LogProbFusion)):
        cfg = load_config("experiments/configs/fgsynth_default.yaml", [f"model.fusion={kind}"])
        model = build_racnn(cfg, 4).eval()
        assert all(isinstance(h, cls) for h in model.fusion.values())
        with torch.no_grad():
            out = model(torch.rand(2, 3, 160, 160))
        assert sorted(out.fused) == ["12", "123"] and out.fused["123"].shape == (2, 4)
        if kind == "log_probs":  # at init: the sum of the three scales' log-probabilities
            expected = sum(F.log_softmax(x, 1) for x in out.logits)
            assert torch.allclose(out.fused["123"], expected, atol=1e-5)


def test_the_fusion_head_leaves_the_random_stream_to_the_rest_of_the_run():
    """Both heads build the same scales and APNs and leave the same RNG state behind, so the
    alternation before fusion is the same run whichever head follows it (experiments/grids/fusion.yaml)."""
    states = []
    for kind in ("features", "log_probs"):
        cfg = load_config("experiments/configs/fgsynth_default.yaml", [f"model.fusion={kind}"])
        torch.manual_seed(0)
        model = build_racnn(cfg, 4)
        states.append(({k: v for k, v in model.state_dict().items() if not k.startswith("fusion.")}, torch.rand(3)))
    (a, ra), (b, rb) = states
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(ra, rb)
