"""The fusion heads (raccnn/models/fusion.py): formulas, the fit on held-out outputs, the model's use."""
import math

import pytest
import torch
import torch.nn.functional as F

from raccnn.models import build_racnn
from raccnn.config import load_config
from raccnn.models.fusion import FeatureFusion, LogProbFusion, build_fusion, fit_log_prob_head, fit_log_prob_weights


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


def _three_scales(seed: int):
    """60 held-out images of 4 classes: a weak diffuse coarse scale, a middling one, a strong and
    overconfident finest one (a fixed draw, so which fit is more accurate is known)."""
    g = torch.Generator().manual_seed(seed)
    n, k = 60, 4
    labels = torch.randint(0, k, (n,), generator=g)
    coarse = 0.8 * F.one_hot(labels, k).float() + torch.randn(n, k, generator=g)
    mid = 2.5 * F.one_hot(labels, k).float() + 1.5 * torch.randn(n, k, generator=g)
    fine = 6.0 * F.one_hot(labels, k).float() + 3.0 * torch.randn(n, k, generator=g)
    return [coarse, mid, fine], labels


def _fit_over(logits, labels, first: int) -> tuple[LogProbFusion, int]:
    head = LogProbFusion(3)
    head.used[:first] = False
    fit_log_prob_weights(head, logits, labels)
    with torch.no_grad():
        return head, int((head(None, logits).argmax(1) == labels).sum())


@pytest.mark.parametrize("seed, all_right, finer_right, kept_first", [(11, 53, 55, 1), (4, 55, 55, 0), (0, 54, 52, 0)])
def test_subsets_keep_the_more_accurate_fit_and_ties_keep_every_scale(seed, all_right, finer_right, kept_first):
    """train.fusion.subsets: the head over scales 1-3 is also fitted over scales 2-3 alone; the fit
    right on more held-out images is kept (scale 1's weight then exactly 0), a tie keeps scales 1-3."""
    logits, labels = _three_scales(seed)
    fits = [_fit_over(logits, labels, first) for first in (0, 1)]
    assert [right for _, right in fits] == [all_right, finer_right]
    head = LogProbFusion(3)
    nll = fit_log_prob_head(head, logits, labels, subsets=True)
    kept = fits[kept_first][0]
    assert head.used.tolist() == [kept_first == 0, True, True]
    assert torch.equal(head.weights(), kept.weights()) and (head.weights()[0] == 0) == (kept_first == 1)
    with torch.no_grad():
        assert nll == pytest.approx(F.cross_entropy(head(None, logits), labels).item(), rel=1e-6)
    # without subsets the head is the fit over every scale, whatever its accuracy
    plain = LogProbFusion(3)
    fit_log_prob_head(plain, logits, labels)
    assert plain.used.all() and torch.equal(plain.weights(), fits[0][0].weights())


def test_a_scale_left_out_is_skipped_and_a_head_saved_before_the_flag_loads_with_every_scale():
    head = LogProbFusion(2)
    head.used[0] = False
    left_out = torch.tensor([[0.0, -math.inf]])  # log softmax -inf: 0 x -inf would be nan
    out = head(None, [left_out, torch.tensor([[1.0, 0.0]])])
    assert torch.isfinite(out).all() and torch.allclose(out, F.log_softmax(torch.tensor([[1.0, 0.0]]), 1))
    old = {"raw": torch.tensor([0.1, 0.2])}  # a state dict written before ``used`` existed
    again = LogProbFusion(2)
    again.load_state_dict(old)
    assert again.used.all() and torch.equal(again.raw.data, old["raw"])


def test_subsets_need_the_log_probs_heads():
    from raccnn.errors import ConfigError
    with pytest.raises(ConfigError, match=r"train\.fusion\.subsets.*model\.fusion is features"):
        load_config("experiments/configs/fgsynth_default.yaml", ["train.fusion.subsets=true", "model.fusion=features"])
    load_config("experiments/configs/fgsynth_default.yaml", ["train.fusion.subsets=true", "model.fusion=log_probs"])
