"""The label-driven localisers (raccnn/localisers.py): their losses by hand, the direction their
gradient moves a square in, their place in the schedule, under DDP and autocast."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import DEFAULT_CONFIG, make_trainer
from torch import nn

from raccnn.config import ConfigError, load_config
from raccnn.engine.phases import AlternateAPN, LocaliseAPN, build_plan
from raccnn.engine.trainer import PhaseStep
from raccnn.localisers import (LOCALISER_CLASSES, LOCALISERS, best_of_k_loss, best_square_loss,
                               leave_one_out_baseline, reinforce_loss, spread_squares, square_scores,
                               true_class_log_prob)
from raccnn.models.racnn import RACNN

NAMES = [n for n in LOCALISERS if n != "rank"]


# ------------------------------------------------------------------ the losses by hand
def test_best_of_k_regresses_onto_the_confidence_weighted_mean():
    square = torch.tensor([[0.5, 0.5, 0.3]], requires_grad=True)
    candidates = torch.tensor([[[0.5, 0.5, 0.3], [0.6, 0.5, 0.3]]])
    scores = torch.tensor([[math.log(0.2), math.log(0.6)]])  # at T = 1 the weights are 0.25 and 0.75
    loss, goal = best_of_k_loss(square, candidates, scores, temperature=1.0)
    assert torch.allclose(goal, torch.tensor([[0.575, 0.5, 0.3]]))
    assert loss.item() == pytest.approx(0.075 ** 2 / 3, rel=1e-5)
    loss.backward()
    assert torch.allclose(square.grad, torch.tensor([[2 * (0.5 - 0.575) / 3, 0.0, 0.0]]))
    # a low temperature takes the best candidate alone
    _, goal = best_of_k_loss(square, candidates, scores, temperature=1e-3)
    assert torch.allclose(goal, candidates[:, 1])


def test_search_regresses_onto_the_best_candidate():
    """Image 0: the second candidate scores best; image 1: the current square does (zero loss there)."""
    square = torch.tensor([[0.5, 0.5, 0.3], [0.4, 0.6, 0.2]], requires_grad=True)
    candidates = torch.tensor([[[0.5, 0.5, 0.3], [0.2, 0.3, 0.3], [0.7, 0.7, 0.3]],
                               [[0.4, 0.6, 0.2], [0.8, 0.2, 0.2], [0.2, 0.2, 0.2]]])
    scores = torch.tensor([[-2.0, -0.5, -1.0], [-0.1, -3.0, -0.1]])  # a tie goes to the first
    loss, goal = best_square_loss(square, candidates, scores)
    assert torch.equal(goal, torch.tensor([[0.2, 0.3, 0.3], [0.4, 0.6, 0.2]]))
    assert loss.item() == pytest.approx((0.3 ** 2 + 0.2 ** 2) / 6, rel=1e-5)
    loss.backward()
    assert torch.allclose(square.grad, torch.tensor([[2 * 0.3 / 6, 2 * 0.2 / 6, 0.0], [0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("keep_inside", [True, False])
def test_search_squares_have_one_size_and_cover_the_view(keep_inside):
    """The first square sits at the current centre, the others anywhere the half side fits; all
    have half side tl, raised into the APN's bounds."""
    apn = nn.Module()
    apn.tl_min, apn.tl_max, apn.keep_inside = 0.1, 0.5, keep_inside
    torch.manual_seed(0)
    square = torch.tensor([[0.5, 0.5, 0.45], [0.3, 0.7, 0.05]])
    for tl, expected in ((0.2, 0.2), (0.05, 0.1)):
        draws = spread_squares(square, 4000, tl, apn)
        assert draws.shape == (2, 4001, 3)
        assert torch.equal(draws[:, 0, :2], square[:, :2]) and torch.equal(draws[..., 2], torch.full((2, 4001), expected))
        lo = expected if keep_inside else 0.0
        centres = draws[:, 1:, :2]
        assert centres.min() >= lo and centres.max() <= 1 - lo
        assert centres.min() < lo + 0.01 and centres.max() > 1 - lo - 0.01  # the whole range, uniformly
        assert centres.mean().item() == pytest.approx(0.5, abs=0.01)


def test_the_leave_one_out_baseline_is_the_mean_of_the_other_rewards():
    assert torch.equal(leave_one_out_baseline(torch.tensor([[1.0, 2.0, 6.0]])), torch.tensor([[4.0, 3.5, 1.5]]))


def test_reinforce_loss_and_its_gradient_by_hand():
    """K = 2 draws of N(m, 1): x1 = m + (0.2, 0, 0) with reward 1, x2 = m + (0, 0.1, 0) with reward 0.
    Advantages (1, -1); log pi = -|x - m|^2 / 2 + c; loss = -(1 (-0.02 + c) - (-0.005 + c)) / 2 =
    0.0075; d loss / dm = -(1 (x1 - m) - (x2 - m)) / 2 = (-0.1, 0.05, 0): towards the rewarded draw."""
    m = torch.tensor([[0.5, 0.5, 0.3]], requires_grad=True)
    draws = m.detach()[:, None] + torch.tensor([[[0.2, 0.0, 0.0], [0.0, 0.1, 0.0]]])
    loss = reinforce_loss(m, draws, torch.tensor([[1.0, 0.0]]), sigma=1.0)
    assert loss.item() == pytest.approx(0.0075, abs=1e-6)
    loss.backward()
    assert torch.allclose(m.grad, torch.tensor([[-0.1, 0.05, 0.0]]), atol=1e-6)
    # sigma scales the density: the same draws at sigma 0.5 give 4x the gradient
    m.grad = None
    reinforce_loss(m, draws, torch.tensor([[1.0, 0.0]]), sigma=0.5).backward()
    assert torch.allclose(m.grad, torch.tensor([[-0.4, 0.2, 0.0]]), atol=1e-5)


# ------------------------------------------------------------------ what a square scores
def tiny_model(n_scales: int, num_classes: int = 2) -> RACNN:
    torch.manual_seed(0)
    return RACNN(num_classes, width=4, n_scales=n_scales, input_sizes=[32] * n_scales,
                 apn={"hidden": 8, "pool_size": 2}).eval()


def test_a_square_is_scored_as_the_forward_pass_sees_it_at_every_scale():
    """The score of the squares the forward pass used equals its own log p_t at the next scale:
    a scale-3 square is composed within scale 2's square and cropped from the full input."""
    model = tiny_model(3, num_classes=3)
    images, target = torch.rand(2, 3, 48, 48), torch.tensor([0, 2])
    boxes = [torch.tensor([[0.4, 0.6, 0.3], [0.7, 0.3, 0.2]]), torch.tensor([[0.3, 0.35, 0.25], [0.6, 0.5, 0.4]])]
    with torch.no_grad():
        out = model(images, boxes=boxes)
    for s in (1, 2):
        parent = out.abs_boxes[s - 2] if s == 2 else None
        scores = square_scores(model, images, parent, boxes[s - 1][:, None], target, s)
        assert torch.allclose(scores[:, 0], true_class_log_prob(out.logits[s], target), atol=1e-5)


class Brightness(nn.Module):
    """A scale whose confidence in class 0 grows with how bright what it sees is (p = 0.21 on the
    centre square of ``test_the_gradient_moves_every_square_towards_the_bright_block``: far from
    saturation, so the squares around it are told apart)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        b = x.float().mean(dim=(1, 2, 3))
        logits = torch.stack((10 * b - 3, torch.zeros_like(b)), dim=1)
        return logits, x.new_zeros(len(x), self.channels), x.new_zeros(len(x), self.channels, 2, 2)


def bright_block_model(n_scales: int) -> RACNN:
    """Every APN at the centre square (tl 0.3, the zero-initialised last layer); scales 2+ are
    ``Brightness``: the squares over the bright block are the better ones."""
    model = tiny_model(n_scales)
    for s in range(1, n_scales):
        model.scales[s] = Brightness(model.scales[0].classifier.in_features)
    return model


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n_scales", [2, 3])
@pytest.mark.parametrize("right", [True, False])
def test_the_gradient_moves_every_square_towards_the_bright_block(name, n_scales, right):
    """A bright block up and to the right (or up and to the left, mirrored) of the centre: every
    APN's gradient on its x output (the last layer's bias) points towards it, and on y upwards.
    APN 2 sees the block only through its composition within APN 1's square."""
    model = bright_block_model(n_scales)
    images = torch.zeros(4, 3, 64, 64)
    cols = slice(35, 61) if right else slice(3, 29)  # x in [0.55, 0.95] or [0.05, 0.45]
    images[:, :, 3:29, cols] = 1.0  # y in [0.05, 0.45]
    torch.manual_seed(1)
    localiser = LOCALISER_CLASSES[name](candidates=32, sigma=0.1, temperature=1.0)
    loss, terms, _ = localiser.loss(model, images, torch.zeros(4, dtype=torch.long), None)
    loss.backward()
    for s, apn in enumerate(model.proposers):
        gx, gy = apn.fc2.bias.grad[:2].tolist()
        assert (gx < 0) == right, (s, gx)  # descent raises tx towards a block on the right
        assert gy > 0, (s, gy)  # and lowers ty towards the top
        assert 0 < terms[f"train/loc_better_apn{s + 1}"] < 1


@pytest.mark.parametrize("tl, shrinks", [(0.15, True), (0.45, False)])
def test_search_pulls_every_square_to_its_size(tl, shrinks):
    """From the centre squares (half side 0.3), search's gradient on each APN's tl output lowers it
    towards tl 0.15 and raises it towards 0.45, wherever the best square lies."""
    model = bright_block_model(3)
    images = torch.zeros(4, 3, 64, 64)
    images[:, :, 3:29, 35:61] = 1.0
    torch.manual_seed(1)
    loss, _, _ = LOCALISER_CLASSES["search"](candidates=8, sigma=0.1, temperature=1.0, tl=tl).loss(
        model, images, torch.zeros(4, dtype=torch.long), None)
    loss.backward()
    for s, apn in enumerate(model.proposers):
        assert (apn.fc2.bias.grad[2].item() > 0) == shrinks, s


def test_the_localiser_phase_logs_its_terms_under_autocast():
    """Under bf16 autocast the loss is float32 and finite, and the terms name every APN."""
    cfg = load_config(DEFAULT_CONFIG, ["train.alternate.localiser=reinforce"])
    model = tiny_model(3)
    images, target = torch.rand(3, 3, 48, 48), torch.tensor([0, 1, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, terms = LocaliseAPN(cfg, 0).loss(model, images, target, None)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    expected = {f"train/{t}_apn{s}" for t in ("loc_pg", "loc_reward", "loc_current", "loc_better") for s in (1, 2)}
    assert expected | {"train/rank_active_1_2", "train/rank_active_2_3"} == set(terms)


# ------------------------------------------------------------------ the schedule
def test_rank_is_the_default_and_keeps_the_plan():
    default = build_plan(load_config(DEFAULT_CONFIG))
    rank = build_plan(load_config(DEFAULT_CONFIG, ["train.alternate.localiser=rank"]))
    assert [(type(p), p.label) for p in rank] == [(type(p), p.label) for p in default]
    assert [p for p in rank if type(p) is AlternateAPN] and not [p for p in rank if isinstance(p, LocaliseAPN)]
    for name in NAMES:
        plan = build_plan(load_config(DEFAULT_CONFIG, [f"train.alternate.localiser={name}"]))
        assert [p.label for p in plan] == [p.label for p in default]
        swapped = [p for p in plan if isinstance(p, LocaliseAPN)]
        assert [p.label for p in swapped] == [p.label for p in default if type(p) is AlternateAPN]
        assert all(p.localiser.name == name and p.settings is plan[0].cfg["train"]["alternate"]["apn"] for p in swapped)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n_scales", [2, 3])
def test_the_whole_schedule_runs_with_each_localiser(data_root, tmp_path, name, n_scales):
    extra = [f"train.alternate.localiser={name}", f"model.n_scales={n_scales}", f"model.input_sizes={[32] * n_scales}"]
    trainer = make_trainer(data_root, tmp_path, extra=extra)
    trainer.run()
    phases = [h["phase"] for h in trainer.progress.history]
    assert phases[-1] == "fusion" and "alternate_apn[round 2]" in phases
    for h in trainer.progress.history:
        if h["phase"].startswith("alternate_apn"):  # every APN moved since the frozen classifier epoch
            assert all(h[f"apn{s}_dtx"] + h[f"apn{s}_dty"] + h[f"apn{s}_dtl"] > 0 for s in range(1, n_scales))
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())


def test_a_bad_localiser_is_one_config_error():
    with pytest.raises(ConfigError, match=r"train\.alternate\.localiser: 'nts' is not one of "
                                          r"\['rank', 'best_of_k', 'reinforce', 'search'\]"):
        load_config(DEFAULT_CONFIG, ["train.alternate.localiser=nts"])
    with pytest.raises(ConfigError, match=r"train\.alternate\.localise\.sigma: 0 must be > 0"):
        load_config(DEFAULT_CONFIG, ["train.alternate.localise.sigma=0"])


def test_train_cli_refuses_a_bad_localiser_before_any_work(tmp_path):
    res = subprocess.run([sys.executable, "tools/train.py", "--config", DEFAULT_CONFIG, "--work-dir",
                          str(tmp_path / "wd"), "--opts", "train.alternate.localiser=nts"], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert [line for line in res.stderr.splitlines() if line.startswith("error:")] == [res.stderr.strip()]
    assert "train.alternate.localiser" in res.stderr and "best_of_k" in res.stderr
    assert not (tmp_path / "wd").exists()


# ------------------------------------------------------------------ under DDP
def _ddp_worker(rank, rendezvous, results):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    for name in NAMES:
        cfg = load_config(DEFAULT_CONFIG, [f"train.alternate.localiser={name}"])
        model, phase = tiny_model(3), LocaliseAPN(cfg, 0)
        params = phase.freeze(model)
        step = nn.parallel.DistributedDataParallel(PhaseStep(model, phase))
        optimizer = torch.optim.SGD(params, lr=0.5)
        torch.manual_seed(10 + rank)  # each rank its own images and draws
        before = [p.detach().clone() for p in params]
        for _ in range(2):  # a parameter left without gradient would stop DDP at the second forward
            loss, _ = step(torch.rand(2, 3, 48, 48), torch.randint(0, 2, (2,)), None)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        gathered = [torch.zeros_like(flat) for _ in range(2)]
        dist.all_gather(gathered, flat)
        moved = all(not torch.equal(b, p) for b, p in zip(before, params) if b.shape == (3,))  # the last layers' biases
        results[(rank, name)] = (torch.equal(gathered[0], gathered[1]), moved)
    dist.destroy_process_group()


def test_under_ddp_every_rank_ends_with_the_same_apns(tmp_path):
    """Two gloo processes on different images, for each localiser: DDP averages the APNs'
    gradients, which reach them only through the loss, so both ranks end with the same (moved) APNs."""
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(str(tmp_path / "rendezvous"), results), nprocs=2)
    assert dict(results) == {(rank, name): (True, True) for rank in (0, 1) for name in NAMES}
