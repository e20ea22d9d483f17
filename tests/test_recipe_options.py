"""Recipe options: lr warmup, label smoothing, mixup and tries in pretrain_cls, gradient accumulation
(docs/configs.md) and scales frozen in alternate_cls (docs/model.md).

Each is checked against what it must compute: the learning rate of every optimiser step against
the warmup + cosine formula (also across a resume mid-warmup, with and without a changed lr), the
training cross-entropies against the hand-computed smoothed one, and accumulated gradients and
weights against the gradient of the mean loss over the group's images, frozen scales' weights and
statistics against what they were.
"""
import contextlib
import math
import signal
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from conftest import DEFAULT_CONFIG, TINY, make_trainer
from torch.nn.parallel import DistributedDataParallel
from torch.optim.optimizer import register_optimizer_step_pre_hook

from raccnn.config import ConfigError, load_config
from raccnn.engine.accumulate import Accumulation
from raccnn.engine.checkpoint import load_checkpoint
from raccnn.engine.phases import AlternateCls, Fusion, Joint, PretrainCls
from raccnn.engine.preemption import Preempted, Preemption
from raccnn.engine.schedule import build_schedule
from raccnn.losses import scale_ce_losses
from raccnn.models.racnn import build_racnn


def expected_lr(k: int, lr: float, total: int, warmup: int, factor: float) -> float:
    """The lr of the k-th optimiser step (from 0): linear from factor x lr over ``warmup`` steps, then
    a cosine from lr to 0 over the remaining steps."""
    if k < warmup:
        return lr * (factor + (1 - factor) * k / warmup)
    return lr * (1 + math.cos(math.pi * (k - warmup) / (total - warmup))) / 2


class StepRecorder:
    """Records, at every optimiser step of any optimiser, its first group's lr and a copy of the gradients."""

    def __init__(self, grads: bool = False):
        self.lrs, self.grads, self.keep_grads = [], [], grads

    def __enter__(self):
        def hook(optimizer, args, kwargs):
            self.lrs.append(optimizer.param_groups[0]["lr"])
            if self.keep_grads:
                self.grads.append([p.grad.clone() for g in optimizer.param_groups for p in g["params"]])
        self.handle = register_optimizer_step_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ------------------------------------------------------------------------------------------ warmup
@pytest.mark.parametrize("epochs, steps, warmup_epochs, factor", [(3, 4, 1.0, 0.01), (2, 5, 0.5, 1e-3), (4, 1, 2, 0.1)])
def test_warmup_then_cosine_gives_the_formulas_lr_at_every_step(epochs, steps, warmup_epochs, factor):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.05)
    schedule = build_schedule(opt, epochs, steps, warmup_epochs, factor)
    total, warmup = epochs * steps, math.ceil(warmup_epochs * steps)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    expected = [expected_lr(k, 0.05, total, warmup, factor) for k in range(total)]
    torch.testing.assert_close(lrs, expected, rtol=1e-12, atol=1e-15)
    assert lrs[warmup] == pytest.approx(0.05) and lrs[0] == pytest.approx(0.05 * factor)


def test_without_warmup_the_schedule_is_the_former_cosine_bit_for_bit():
    lrs = []
    for build in (lambda o: build_schedule(o, 3, 7), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 21)):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.05)
        schedule, seen = build(opt), []
        for _ in range(21):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.step()
        lrs.append(seen)
    assert lrs[0] == lrs[1]


# 18 training images in batches of 4: 4 batches an epoch (drop_last); with accumulate=3 two optimiser
# steps an epoch (3 batches, then 1); 3 epochs: 6 steps, of which ceil(1.5 x 2) = 3 warm up
WARM = ["data.batch_size=4", "train.accumulate=3", "train.pretrain_cls.epochs=3",
        "train.pretrain_cls.warmup_epochs=1.5",
        "train.warmup_factor=0.1", "model.dropout=0"]


def pretrain_only(data_root, work_dir, extra=()):
    trainer = make_trainer(data_root, work_dir, extra=[*WARM, *extra])
    trainer.plan = [PretrainCls(trainer.cfg)]
    return trainer


def test_trainer_lrs_follow_warmup_over_optimiser_steps_and_a_resume_mid_warmup_continues_them(data_root, tmp_path):
    with StepRecorder() as full:
        pretrain_only(data_root, tmp_path / "full").run()
    assert len(full.lrs) == 6
    torch.testing.assert_close(full.lrs, [expected_lr(k, 0.05, 6, 3, 0.1) for k in range(6)], rtol=1e-12, atol=0)

    # stopped after epoch 1 (2 steps, inside the warmup), resumed: the same lrs
    pretrain_only(data_root, tmp_path / "cut").run(stop_after_step=2)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["progress"]["step"] == 2
    with StepRecorder() as rest:
        trainer = pretrain_only(data_root, tmp_path / "cut")
        trainer.resume(str(tmp_path / "cut" / "last.pt"))
        trainer.run()
    assert rest.lrs == full.lrs[2:]

    # resumed mid-warmup with another lr: the rest of the schedule is the formula's at the new lr,
    # the cosine after the warmup included
    pretrain_only(data_root, tmp_path / "new_lr").run(stop_after_step=2)
    with StepRecorder() as rest:
        trainer = pretrain_only(data_root, tmp_path / "new_lr", ["train.pretrain_cls.lr=0.02"])
        trainer.resume(str(tmp_path / "new_lr" / "last.pt"))
        trainer.run()
    torch.testing.assert_close(rest.lrs, [expected_lr(k, 0.02, 6, 3, 0.1) for k in range(2, 6)], rtol=1e-12, atol=0)


@pytest.mark.parametrize("opt, message", [
    ("train.accumulate=0", "train.accumulate: 0 is below the minimum 1"),
    ("train.accumulate=-2", "train.accumulate: -2 is below the minimum 1"),
    ("train.accumulate=1.5", "train.accumulate: expected int, got float 1.5"),
    ("train.label_smoothing=1", "train.label_smoothing: 1 must be below 1"),
    ("train.label_smoothing=-0.1", "train.label_smoothing: -0.1 is below the minimum 0.0"),
    ("train.pretrain_cls.warmup_epochs=20", r"train.pretrain_cls.warmup_epochs \(20\) must be shorter than the phase: "
                                            "train.pretrain_cls.epochs is 20"),
    ("train.alternate.apn.warmup_epochs=3.5",
     "train.alternate.apn.warmup_epochs .* train.alternate.apn.max_epochs is 3"),
    ("train.pretrain_cls.warmup_epochs=-1", "train.pretrain_cls.warmup_epochs: -1 is below the minimum 0.0"),
    ("train.warmup_factor=0", "train.warmup_factor: 0 must be > 0"),
    ("train.pretrain_cls.tries=0", "train.pretrain_cls.tries: 0 is below the minimum 1"),
])
def test_bad_recipe_values_are_one_config_error(opt, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEFAULT_CONFIG, [opt])


# ------------------------------------------------------------------------------------ label smoothing
def smoothed_ce(logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """(1 - eps) x -log p(true class) + eps x the mean over classes of -log p(class), batch mean."""
    logp = logits.double().log_softmax(1)
    return ((1 - eps) * -logp.gather(1, target[:, None]).squeeze(1) + eps * -logp.mean(1)).mean().float()


def test_training_cross_entropies_are_smoothed_and_validation_is_not(data_root, tmp_path):
    torch.manual_seed(0)
    logits, target = torch.randn(6, 5) * 3, torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(scale_ce_losses([logits], target, 0.2)[0], smoothed_ce(logits, target, 0.2))

    cfg = load_config(DEFAULT_CONFIG, TINY + ["train.label_smoothing=0.2", "model.fusion=features"])
    model = build_racnn(cfg, 3, []).eval()
    images, target = torch.randn(4, 3, 96, 96), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        out = model(images)
        scale1 = model.scales[0](model.scale_input(images, None, 0))[0]
        loss, _ = PretrainCls(cfg).loss(model, images, target, None)
        torch.testing.assert_close(loss, smoothed_ce(scale1, target, 0.2))
        every_scale = sum(smoothed_ce(x, target, 0.2) for x in out.logits)
        torch.testing.assert_close(AlternateCls(cfg, 0).loss(model, images, target, None)[0], every_scale)
        joint, terms = Joint(cfg).loss(model, images, target, None)
        torch.testing.assert_close(joint - cfg["train"]["joint"]["rank_weight"] * terms["train/rank"], every_scale)
        fused = sum(smoothed_ce(head(out.features, out.logits), target, 0.2) for head in model.fusion.values())
        torch.testing.assert_close(Fusion(cfg).loss(model, images, target, None)[0], fused)

    trainer = make_trainer(data_root, tmp_path, ["train.label_smoothing=0.2"])
    val = trainer.validation(trainer.model)
    plain = sum(F.cross_entropy(logits.float(), val.outputs.label) for logits in val.outputs.logits)
    assert val.ce == pytest.approx(plain.item(), rel=1e-6)


# ------------------------------------------------------------------------------------------- mixup
def test_mixup_blends_pairs_of_images_and_weighs_both_labels_cross_entropies_by_the_blend():
    torch.manual_seed(5)  # a network whose loss on these images moves by 0.11 when they are blended
    cfg = load_config(DEFAULT_CONFIG, TINY + ["train.pretrain_cls.mixup=0.4"])
    model = build_racnn(cfg, 3, []).eval()
    # images of different brightness and a classifier of large weights: the logits differ between the
    # images and are far from uniform, so a blend shows in the loss
    images = torch.randn(4, 3, 96, 96) + torch.tensor([-3.0, 3.0, 0.0, 6.0])[:, None, None, None]
    target = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        model.scales[0].classifier.weight.mul_(100)
        torch.manual_seed(3)
        loss, terms = PretrainCls(cfg).loss(model, images, target, None)
        # the same draws by hand: the Beta(0.4, 0.4) weight, then the partner of each image
        torch.manual_seed(3)
        lam = float(torch.distributions.Beta(0.4, 0.4).sample())
        other = torch.randperm(4)
        assert 0 < lam < 1 and not torch.equal(other, torch.arange(4))
        blended = lam * images + (1 - lam) * images[other]
        logits = model.scales[0](model.scale_input(blended, None, 0))[0]
        logp = logits.double().log_softmax(1)
        by_hand = -(lam * logp[range(4), target] + (1 - lam) * logp[range(4), target[other]]).mean()
        torch.testing.assert_close(loss.double(), by_hand)
        torch.testing.assert_close(terms["train/ce_scale1"], loss)
        plain = F.cross_entropy(model.scales[0](model.scale_input(images, None, 0))[0], target)
        assert abs(loss.item() - plain.item()) > 0.05
        # only pretrain_cls mixes: alternate_cls still sums every scale's plain cross-entropy
        out = model(images)
        every_scale = sum(F.cross_entropy(x, target) for x in out.logits)
        torch.testing.assert_close(AlternateCls(cfg, 0).loss(model, images, target, None)[0], every_scale)


# ------------------------------------------------------------------------- several tries of pretrain_cls
def weights(net: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("scores, kept", [((0.5, 0.8, 0.6), 1), ((0.5, 0.6, 0.8), 2), ((0.7, 0.7, 0.7), 0)])
def test_tries_start_from_the_same_weights_and_the_best_validation_accuracy_is_kept_in_every_scale(
        data_root, tmp_path, monkeypatch, scores, kept):
    """train.pretrain_cls.tries=3: each try starts from the weights scale 1 had before the first; the
    try whose last epoch has the best validation accuracy of scale 1 (the earliest of a tie) ends in
    every scale and in best_pretrain.pt. The accuracies the tries report are set by the test."""
    trainer = make_trainer(data_root, tmp_path, ["train.pretrain_cls.tries=3"])
    assert [p.label for p in trainer.plan[:4]] == [
        "pretrain_cls[try 1]", "pretrain_cls[try 2]", "pretrain_cls[try 3]", "init_apn"]
    trainer.plan = trainer.plan[:3]
    first, starts, ends = weights(trainer.model.scales[0]), [], []
    on_start, on_end = PretrainCls.on_start, PretrainCls.on_end

    def record_start(phase, tr):
        on_start(phase, tr)
        starts.append(weights(tr.model.scales[0]))

    def record_end(phase, tr):
        ends.append(weights(tr.model.scales[0]))
        tr.progress.history[-1]["acc_scale1"] = scores[phase.round]
        on_end(phase, tr)

    monkeypatch.setattr(PretrainCls, "on_start", record_start)
    monkeypatch.setattr(PretrainCls, "on_end", record_end)
    trainer.run()
    assert len(starts) == len(ends) == 3 and all(same(w, first) for w in starts)
    assert not same(ends[0], ends[1]) and not same(ends[1], ends[2])  # another sample order, another result
    assert all(same(weights(net), ends[kept]) for net in trainer.model.scales)
    assert same(load_checkpoint(tmp_path / "best_pretrain.pt")["scale"], ends[kept])
    assert trainer.progress.best["best_pretrain.pt"] == scores[kept]


@pytest.mark.parametrize("scores, kept, runner_up", [((0.5, 0.8, 0.6), 1, 2), ((0.5, 0.6, 0.8), 2, 1),
                                                     ((0.7, 0.7, 0.7), 0, 1), ((0.9, 0.5, 0.6), 0, 2)])
def test_runner_up_scales_start_from_the_second_best_try_and_the_others_from_the_best(
        data_root, tmp_path, monkeypatch, scores, kept, runner_up):
    """train.pretrain_cls.runner_up_scales=[3] with 3 tries: scale 3 ends pretrain_cls with the try of
    the second-best validation accuracy (of a tie the earlier is the better), scales 1 and 2 with the
    best; both tries are in their files."""
    trainer = make_trainer(data_root, tmp_path, ["train.pretrain_cls.tries=3", "train.pretrain_cls.runner_up_scales=[3]"])
    trainer.plan = trainer.plan[:3]
    ends, on_end = [], PretrainCls.on_end

    def record_end(phase, tr):
        ends.append(weights(tr.model.scales[0]))
        tr.progress.history[-1]["acc_scale1"] = scores[phase.round]
        on_end(phase, tr)

    monkeypatch.setattr(PretrainCls, "on_end", record_end)
    trainer.run()
    assert not same(ends[kept], ends[runner_up])
    scales = [weights(net) for net in trainer.model.scales]
    assert same(scales[0], ends[kept]) and same(scales[1], ends[kept]) and same(scales[2], ends[runner_up])
    assert same(load_checkpoint(tmp_path / "best_pretrain.pt")["scale"], ends[kept])
    assert same(load_checkpoint(tmp_path / "runner_up_pretrain.pt")["scale"], ends[runner_up])
    assert trainer.progress.best["runner_up_pretrain.pt"] == scores[runner_up]


@pytest.mark.parametrize("opts", [["train.pretrain_cls.runner_up_scales=[3]"],
                                  ["train.pretrain_cls.tries=2", "train.pretrain_cls.runner_up_scales=[4]"],
                                  ["train.pretrain_cls.tries=2", "train.pretrain_cls.runner_up_scales=[3,3]"]])
def test_runner_up_scales_need_a_second_try_and_existing_distinct_scales(opts):
    with pytest.raises(ConfigError, match=r"train.pretrain_cls.runner_up_scales .*distinct scales from 2 to model.n_scales \(3\)"):
        load_config(DEFAULT_CONFIG, opts)
    with pytest.raises(ConfigError, match=r"runner_up_scales"):
        load_config(DEFAULT_CONFIG, ["train.pretrain_cls.tries=2", "train.pretrain_cls.runner_up_scales=[1]"])
    load_config(DEFAULT_CONFIG, ["train.pretrain_cls.tries=2", "train.pretrain_cls.runner_up_scales=[2,3]"])


def test_a_run_resumed_between_tries_starts_the_next_from_the_first_ones_weights(data_root, tmp_path):
    def run(work_dir, stop_after_step=None):
        trainer = make_trainer(data_root, work_dir, ["train.pretrain_cls.tries=2"])
        trainer.plan = trainer.plan[:2]
        if stop_after_step is None and (work_dir / "last.pt").exists():
            trainer.resume(str(work_dir / "last.pt"))
        trainer.run(stop_after_step=stop_after_step)
        return trainer

    full = run(tmp_path / "full")
    run(tmp_path / "cut", stop_after_step=2)  # try 1 is 2 steps
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["phase"] == "pretrain_cls[try 2]"
    resumed = run(tmp_path / "cut")
    assert resumed.progress.step == full.progress.step == 4
    assert all(same(weights(a), weights(b)) for a, b in zip(full.model.scales, resumed.model.scales))


def test_tries_without_a_validation_split_are_one_config_error():
    with pytest.raises(ConfigError, match=r"train.pretrain_cls.tries: the try kept .* data.val_fraction 0 .* set tries to 1"):
        load_config(DEFAULT_CONFIG, ["train.pretrain_cls.tries=2", "data.val_fraction=0", "model.fusion=features"])
    load_config(DEFAULT_CONFIG, ["data.val_fraction=0", "model.fusion=features"])


# ----------------------------------------------------------------------------- gradient accumulation
def test_accumulation_groups_weigh_batches_by_their_images():
    acc = Accumulation(3, [4, 4, 4, 4, 2])
    assert [acc.ends(i) for i in range(5)] == [False, False, True, False, True]
    assert [acc.group_images(i) for i in range(5)] == [12, 12, 12, 6, 6]
    one = torch.tensor(1.0)
    assert [acc.weighted(one, i).item() for i in range(5)] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 4 / 6, 2 / 6])


def test_an_optimiser_step_gets_the_mean_gradient_over_its_groups_images(data_root, tmp_path):
    """lr 0: the weights stay put, so the accumulated gradients compare with the single batches'.
    6 batches of 3 with accumulate=4: one step on batches 1-4 (their mean), one on batches 5-6 (their
    mean, not a quarter of their sum)."""
    extra = ["data.batch_size=3", "train.pretrain_cls.epochs=1", "train.pretrain_cls.lr=0"]
    runs = {}
    for n in (1, 4):
        trainer = make_trainer(data_root, tmp_path / f"n{n}", [*extra, f"train.accumulate={n}"])
        trainer.plan = [PretrainCls(trainer.cfg)]
        with StepRecorder(grads=True) as steps:
            trainer.run()
        runs[n] = steps.grads
        assert trainer.progress.step == {1: 6, 4: 2}[n]
    single, accumulated = runs[1], runs[4]
    for a, *batches in ((accumulated[0], *single[:4]), (accumulated[1], *single[4:])):
        mean = [sum(grads) / len(batches) for grads in zip(*batches)]
        torch.testing.assert_close(a, mean, rtol=1e-5, atol=1e-6)  # float rounding of sums in another order


class EvalModePretrain(PretrainCls):
    """pretrain_cls with BatchNorm on its running statistics: no batch statistics in the loss."""

    def set_modes(self, model):
        model.eval()


def test_n_accumulated_batches_train_as_one_batch_n_times_larger(data_root, tmp_path):
    weights = []
    for batch, n in ((3, 2), (6, 1)):  # 18 images: 3 optimiser steps an epoch either way
        trainer = make_trainer(data_root, tmp_path / f"b{batch}", [
            f"data.batch_size={batch}", f"train.accumulate={n}", "train.pretrain_cls.epochs=2", "model.dropout=0"])
        trainer.plan = [EvalModePretrain(trainer.cfg)]
        trainer.run()
        assert trainer.progress.step == 6
        weights.append({k: v.clone() for k, v in trainer.model.scales[0].state_dict().items()})
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-6)
    moved = make_trainer(data_root, tmp_path / "init").model.scales[0].state_dict()
    assert any(not torch.allclose(moved[k], weights[0][k]) for k in moved if moved[k].is_floating_point())


def test_under_ddp_only_the_last_batch_of_a_group_all_reduces():
    store = tempfile.NamedTemporaryFile(delete=False).name
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = torch.nn.Linear(5, 3)
        reduced = []

        def count(state, bucket):
            reduced.append(bucket.index())
            done = torch.futures.Future()
            done.set_result(bucket.buffer())
            return done

        ddp = DistributedDataParallel(net)
        ddp.register_comm_hook(None, count)
        acc, x = Accumulation(2, [4, 4, 2]), torch.randn(10, 5)
        at = []
        for i, rows in enumerate((slice(0, 4), slice(4, 8), slice(8, 10))):
            if acc.starts(i):
                ddp.zero_grad()
            with acc.sync(ddp, i):
                acc.weighted(ddp(x[rows]).pow(2).mean(), i).backward()
            at.append(len(reduced))
            if i == 1:
                first = [p.grad.clone() for p in net.parameters()]
        assert at == [0, 1, 2]  # nothing after batch 0; batch 1 ends a group, batch 2 is a group alone
        reference = torch.nn.Linear(5, 3)
        reference.load_state_dict(net.state_dict())
        reference(x[:8]).pow(2).mean().backward()
        torch.testing.assert_close(first, [p.grad for p in reference.parameters()], rtol=1e-6, atol=1e-7)
    finally:
        dist.destroy_process_group()


def test_fp16_scaler_unscales_and_steps_once_per_optimiser_step(data_root, tmp_path):
    trainer = make_trainer(data_root, tmp_path, ["data.batch_size=4", "train.accumulate=3", "train.amp=fp16",
                                                 "train.pretrain_cls.epochs=1"])
    trainer.plan = [PretrainCls(trainer.cfg)]
    calls = {"scale": 0, "unscale_": 0, "update": 0}
    for name in calls:
        real = getattr(trainer.scaler, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        setattr(trainer.scaler, name, counted)
    trainer.run()
    assert calls == {"scale": 4, "unscale_": 2, "update": 2} and trainer.progress.step == 2


class StopAtOnce(Preemption):
    """A preemption whose signal has arrived: the trainer stops at the first point it may."""

    def __init__(self):
        super().__init__()
        self.signum = signal.SIGTERM

    def deferred(self):
        return contextlib.nullcontext()

    def requested(self, world, device):
        return True


def test_a_stop_waits_for_the_end_of_the_group_and_the_resumed_run_is_exact(data_root, tmp_path):
    extra = ["data.batch_size=4", "train.accumulate=3", "train.pretrain_cls.epochs=2"]
    full = make_trainer(data_root, tmp_path / "full", extra)
    full.plan = [PretrainCls(full.cfg)]
    full.run()

    stopped = make_trainer(data_root, tmp_path / "stopped", extra)
    stopped.plan = [PretrainCls(stopped.cfg)]
    with pytest.raises(Preempted):
        stopped.run(preemption=StopAtOnce())
    progress = load_checkpoint(tmp_path / "stopped" / "last.pt")["progress"]
    assert (progress["batch"], progress["step"]) == (3, 1)  # after the first group, not after batch 1
    resumed = make_trainer(data_root, tmp_path / "stopped", extra)
    resumed.plan = [PretrainCls(resumed.cfg)]
    resumed.resume(str(tmp_path / "stopped" / "last.pt"))
    resumed.run()
    assert resumed.progress.step == full.progress.step == 4
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


# ------------------------------------------------------------------------ scales frozen in alternate_cls
@pytest.mark.parametrize("frozen", [[1], [2, 3]])
def test_frozen_scales_leave_alternate_cls_as_they_entered_and_the_others_train(data_root, tmp_path, frozen):
    """train.alternate.cls.frozen_scales: the listed scales' weights and BatchNorm statistics are
    the same after alternate_cls, bit for bit; every other scale's weights and statistics move."""
    trainer = make_trainer(data_root, tmp_path, [f"train.alternate.cls.frozen_scales={frozen}"])
    phase = AlternateCls(trainer.cfg, 0)
    trainer.plan = [phase]
    before = [{k: v.clone() for k, v in net.state_dict().items()} for net in trainer.model.scales]
    trainer.run()
    assert trainer.progress.step > 0
    for s, (net, start) in enumerate(zip(trainer.model.scales, before), start=1):
        moved = {k for k, v in net.state_dict().items() if not torch.equal(v, start[k])}
        if s in frozen:
            assert moved == set(), (s, moved)
        else:
            assert any(k.endswith("running_mean") for k in moved) and any(k.endswith("weight") for k in moved), s
    trained = {id(p) for p in phase.parameters(trainer.model)}
    assert trained == {id(p) for s, net in enumerate(trainer.model.scales, start=1) if s not in frozen
                       for p in net.parameters()}


@pytest.mark.parametrize("frozen", ["[1,2,3]", "[4]", "[2,2]", "[0]"])
def test_frozen_scales_must_be_distinct_scales_and_leave_one_to_train(frozen):
    with pytest.raises(ConfigError, match=r"train\.alternate\.cls\.frozen_scales"):
        load_config(DEFAULT_CONFIG, [f"train.alternate.cls.frozen_scales={frozen}"])


def test_frozen_from_round_trains_the_frozen_scales_in_the_rounds_before(data_root, tmp_path):
    """train.alternate.cls.frozen_from_round 2: round 1's alternate_cls trains scale 1 with the
    others, rounds 2 and 3 leave it out."""
    trainer = make_trainer(data_root, tmp_path, ["train.alternate.cls.frozen_scales=[1]",
                                                 "train.alternate.cls.frozen_from_round=2"])
    scales = trainer.model.scales
    for r, trained_scales in [(0, [1, 2, 3]), (1, [2, 3]), (2, [2, 3])]:
        trained = {id(p) for p in AlternateCls(trainer.cfg, r).parameters(trainer.model)}
        assert trained == {id(p) for s in trained_scales for p in scales[s - 1].parameters()}, r


def test_frozen_from_round_after_the_last_round_is_refused():
    with pytest.raises(ConfigError, match=r"train\.alternate\.cls\.frozen_from_round \(4\)"):
        load_config(DEFAULT_CONFIG, ["train.alternate.cls.frozen_scales=[1]", "train.alternate.cls.frozen_from_round=4"])
    load_config(DEFAULT_CONFIG, ["train.alternate.cls.frozen_from_round=4"])  # nothing frozen: nothing to refuse
