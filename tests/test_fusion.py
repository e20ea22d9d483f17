"""The fusion heads (raccnn/models/fusion.py): formulas, the fit on held-out outputs, the model's use."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import load_script, make_trainer
from raccnn.config import load_config
from raccnn.engine.inference import run_evaluation
from raccnn.models import build_racnn
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


def _separable(n=60, k=4, seed=0):
    """Two scales that classify every image right, with different margins."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    return [F.one_hot(labels, k).float() * m + 0.3 * torch.randn(n, k, generator=g) for m in (3.0, 2.0)], labels


def _penalised_gradient(w, logits, labels, l2):
    """d/dw_s [mean_i CE(sum_s w_s lp_si, y_i) + l2 sum_s w_s^2] by hand:
    mean_i (sum_k softmax(z_i)_k lp_sik - lp_si,y_i) + 2 l2 w_s, with z_i = sum_s w_s lp_si."""
    lps = [F.log_softmax(x, 1) for x in logits]
    p = F.softmax(sum(ws * lp for ws, lp in zip(w, lps)), 1)
    rows = torch.arange(len(labels))
    return torch.stack([((p * lp).sum(1) - lp[rows, labels]).mean() + 2 * l2 * ws for ws, lp in zip(w, lps)])


def test_on_a_separable_split_only_the_l2_penalty_gives_the_fit_a_minimum():
    logits, labels = _separable()
    # without the penalty the NLL keeps falling as the weights grow: where the fit ends is where L-BFGS stops
    short, long = LogProbFusion(2), LogProbFusion(2)
    nll_short = fit_log_prob_weights(short, logits, labels, max_iter=3)
    nll_long = fit_log_prob_weights(long, logits, labels, max_iter=100)
    assert nll_long < nll_short and long.weights().sum() > 2 * short.weights().sum()
    # with it: one stationary point, reached from either budget, and the returned NLL leaves the penalty out
    fits = []
    for max_iter in (50, 200):
        head = LogProbFusion(2)
        nll = fit_log_prob_weights(head, logits, labels, max_iter=max_iter, l2=0.1)
        fits.append(head.weights().detach())
        assert nll == pytest.approx(F.cross_entropy(head(None, logits), labels).item(), rel=1e-6)
    assert torch.allclose(fits[0], fits[1], atol=1e-5)
    w = fits[1]
    assert (w > 0.1).all() and w.sum() < long.weights().sum()
    assert _penalised_gradient(w, logits, labels, 0.1).abs().max() < 1e-4
    # the margin-3 scale gets the larger weight
    assert w[0] > w[1]


def test_the_fusion_phase_fits_with_the_configured_l2():
    from types import SimpleNamespace

    from raccnn.engine.phases import Fusion

    cfg = load_config("experiments/configs/fgsynth_default.yaml", ["model.fusion=log_probs", "train.fusion.l2=0.3"])
    torch.manual_seed(0)
    model = build_racnn(cfg, 4)
    logits, labels = _separable()
    third = torch.randn(len(labels), 4)
    out = SimpleNamespace(logits=logits + [third], label=labels)
    trainer = SimpleNamespace(model=model, validation=SimpleNamespace(collect=lambda m: out))
    assert math.isnan(Fusion(cfg).run_epoch(trainer))
    for name, head in model.fusion.items():
        expected, unpenalised = LogProbFusion(head.n), LogProbFusion(head.n)
        fit_log_prob_weights(expected, out.logits, labels, l2=0.3)
        fit_log_prob_weights(unpenalised, out.logits, labels)
        assert torch.equal(head.weights(), expected.weights()), name
        assert not torch.allclose(head.weights(), unpenalised.weights(), atol=1e-2), name


def test_l2_without_the_log_probs_fusion_is_refused_naming_both_keys():
    from raccnn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.fusion\.l2 penalises the weights of model\.fusion log_probs; "
                                          r"model\.fusion is 'features'"):
        load_config("experiments/configs/fgsynth_default.yaml", ["train.fusion.l2=0.1"])
    with pytest.raises(ConfigError, match="train.fusion.l2"):
        load_config("experiments/configs/fgsynth_default.yaml", ["model.fusion=log_probs", "train.fusion.l2=-1"])
    assert load_config("experiments/configs/fgsynth_default.yaml",
                       ["model.fusion=log_probs", "train.fusion.l2=0.1"])["train"]["fusion"]["l2"] == 0.1


def test_the_fusion_ceiling_searches_every_weighting_on_the_simplex():
    ceiling = load_script("experiments/fusion_ceiling.py")
    grid = ceiling.simplex_grid(3, 0.5)
    assert sorted(map(tuple, grid.tolist())) == [(0, 0, 1), (0, 0.5, 0.5), (0, 1, 0), (0.5, 0, 0.5), (0.5, 0.5, 0), (1, 0, 0)]
    assert len(ceiling.simplex_grid(3, 0.02)) == 1326 and len(ceiling.simplex_grid(1, 0.1)) == 1  # C(52, 2)
    with pytest.raises(ValueError, match="got 0.3"):
        ceiling.simplex_grid(3, 0.3)
    # scale A is right on images 0 and 1 and mildly wrong on 2, scale B mildly wrong on 0 and 1 and
    # sure of 2: by hand, with w = (1/2, 1/2) image 0 scores log softmax [2, 0] + log softmax [0, 1] =
    # [-0.127 - 1.313, -2.127 - 0.313] (label 0 wins) and image 2 [-0.313 - 3.049, -1.313 - 0.049]
    # (label 1 wins): all three right, where A alone gets 2 and B 1
    a = torch.tensor([[2.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 1])
    right, w = ceiling.best_weighting([a, b], labels, step=0.5)
    assert right == 3 and w.tolist() == [0.5, 0.5]
    # a scale C wrong on images 1 and 2 and right on 0: image 2 is lost to every weighting of A and C,
    # and image 1 is right only while 2 w_A > 5 w_C (the two log-softmax margins): the ceiling is
    # A's 2 images, reached first at w = (0.8, 0.2) on a grid of step 0.1 (0.7 / 0.3 < 2.5)
    c = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])
    right, w = ceiling.best_weighting([a, c], labels, step=0.1)
    assert right == 2 and w.tolist() == pytest.approx([0.8, 0.2])
    # A errs on image 2 alone, which B gets right and C does not; B errs on 0 and 1, A gets both
    # right and C image 0
    assert ceiling.rescues([a, b, c], labels, best=0) == [0, 1, 0]
    assert ceiling.rescues([a, b, c], labels, best=1) == [2, 0, 1]


def test_the_fusion_ceiling_of_a_finished_run_bounds_its_fused_head(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    make_trainer(data_root, run, extra=["train.alternate.rounds=1", "model.fusion=log_probs"]).run()
    metrics, _ = run_evaluation(str(run / "best.pt"), "test")
    ceiling = load_script("experiments/fusion_ceiling.py")
    assert ceiling.main([str(run), "--step", "0.1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = lines[1].split()
    n = metrics["num_images"]
    best = max(metrics[f"acc_scale{s}"] for s in (1, 2, 3))
    assert int(row[1]) == n and float(row[3]) == pytest.approx(100 * best, abs=0.05)
    assert float(row[5]) == pytest.approx(100 * metrics["acc_fused123"], abs=0.05)  # the head as evaluated
    lead, top = float(row[6]), float(row[7])
    assert top >= max(lead, 0.0) and sum(map(float, row[8:11])) == pytest.approx(1.0)
    rescued = list(map(int, row[11:14]))
    assert rescued[int(row[2][-1]) - 1] == 0 and all(0 <= r <= n - round(best * n) for r in rescued)
    assert lines[-1].startswith(f"1 runs: {int(lead < 0)} heads below their best scale, {int(top <= 0)} with a ceiling")
    with pytest.raises(SystemExit, match="best.pt: no such file"):
        ceiling.main([str(tmp_path / "none")])
    with pytest.raises(SystemExit):
        ceiling.main([str(run), "--step", "0.3"])
    assert "--step must divide 1 into whole parts" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "best.pt").write_bytes(b"not a checkpoint")
    assert ceiling.main([str(tmp_path / "broken")]) != 0
    assert f"cannot read checkpoint {tmp_path / 'broken' / 'best.pt'}" in capsys.readouterr().err
