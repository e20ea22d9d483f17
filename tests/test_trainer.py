"""End-to-end runs of the alternating schedule on a tiny FG-Synth (seconds each)."""
import pytest
import torch
from conftest import TINY, call_main, load_tool, make_trainer

from raccnn.engine.checkpoint import CheckpointError, load_checkpoint


def test_all_phases_run_and_the_apn_moves(data_root, tmp_path):
    trainer = make_trainer(data_root, tmp_path)
    apn_before = [p.detach().clone() for p in trainer.model.proposers.parameters()]
    cls_before = [p.detach().clone() for p in trainer.model.scales.parameters()]
    trainer.run()
    phases = [h["phase"] for h in trainer.progress.history]
    for name in ("pretrain_cls", "init_apn", "alternate_cls[round 1]", "alternate_apn[round 1]",
                 "alternate_cls[round 2]", "alternate_apn[round 2]", "fusion"):
        assert name in phases
    assert phases.index("init_apn") < phases.index("alternate_cls[round 1]") < phases.index("fusion")
    assert any(not torch.equal(a, b) for a, b in zip(apn_before, trainer.model.proposers.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(cls_before, trainer.model.scales.parameters()))
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["progress"]["phase_index"] == len(trainer.plan)
    assert (tmp_path / "best.pt").exists()
    # the fused head was trained and selected on validation
    assert load_checkpoint(tmp_path / "best.pt")["phase"] == "fusion"
    # pretraining copied scale 1's network into the other scales before they diverged
    assert trainer.progress.history[0]["phase"] == "pretrain_cls"

    # TensorBoard: every listed scalar, histogram and per-phase crop image was written
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from raccnn.engine.visualize import crops_tag, histogram_tags, scalar_tags

    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "histograms": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    expected = set(scalar_tags(3, trainer.cfg["model"]["fusion"]))
    assert expected <= set(tags["scalars"]), expected - set(tags["scalars"])
    assert set(histogram_tags(3)) <= set(tags["histograms"])
    assert {crops_tag(p.label) for p in trainer.plan} <= set(tags["images"])
    assert "crops/alternate_apn_round_2" in tags["images"]


def test_alternating_phases_freeze_the_other_part(data_root, tmp_path):
    trainer = make_trainer(data_root, tmp_path)
    trainer.progress.phase_index = 2  # alternate_cls, round 1
    assert trainer.plan[2].label == "alternate_cls[round 1]" and trainer.plan[3].label == "alternate_apn[round 1]"
    trainer.start_phase(trainer.plan[2])
    apn_before = [p.detach().clone() for p in trainer.model.proposers.parameters()]
    trainer.train_epoch(trainer.plan[2])
    assert all(torch.equal(a, b) for a, b in zip(apn_before, trainer.model.proposers.parameters()))
    trainer.start_phase(trainer.plan[3])  # alternate_apn: classifiers and their BN statistics frozen
    cls_before = {k: v.clone() for k, v in trainer.model.scales.state_dict().items()}
    trainer.train_epoch(trainer.plan[3])
    assert all(torch.equal(cls_before[k], v) for k, v in trainer.model.scales.state_dict().items())


def test_lr_decay_lowers_each_rounds_starting_lr(data_root, tmp_path):
    trainer = make_trainer(data_root, tmp_path, extra=["train.alternate.rounds=3", "train.alternate.cls.lr=0.02",
                                                       "train.alternate.cls.lr_decay=0.5"])
    starts = {}
    for phase in trainer.plan:
        trainer.start_phase(phase)
        starts[phase.label] = [g["lr"] for g in trainer.optimizer.param_groups]
    assert starts["alternate_cls[round 1]"] == [0.02]
    assert starts["alternate_cls[round 2]"] == [0.01]
    assert starts["alternate_cls[round 3]"] == [0.005]
    # the APN sub-phases keep their default lr_decay of 1; phases outside the alternation have none
    apn_lr = trainer.cfg["train"]["alternate"]["apn"]["lr"]
    assert all(starts[f"alternate_apn[round {r}]"] == [apn_lr] for r in (1, 2, 3))
    assert starts["pretrain_cls"] == [trainer.cfg["train"]["pretrain_cls"]["lr"]]


def test_phase_optimisers_apply_the_textbook_updates():
    """Two steps of each phase optimiser (fused kernels) against SGD's and Adam's update rules by hand."""
    from raccnn.config import load_config
    from raccnn.engine.phases import AlternateAPN, AlternateCls

    cfg = load_config("experiments/configs/fgsynth_default.yaml", ["train.alternate.cls.lr_decay=0.5"])
    t = cfg["train"]
    p0 = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    grads = [torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64), torch.tensor([-0.4, 0.0, 0.05], dtype=torch.float64)]

    def two_steps(opt_of):
        p = torch.nn.Parameter(p0.clone())
        opt = opt_of([p])
        for g in grads:
            p.grad = g.clone()
            opt.step()
        return p.detach()

    lr, mom, wd = t["alternate"]["cls"]["lr"] * 0.5, t["momentum"], t["weight_decay"]  # round 2
    d1 = grads[0] + wd * p0
    p1 = p0 - lr * d1
    buf = mom * d1 + grads[1] + wd * p1
    assert torch.allclose(two_steps(AlternateCls(cfg, 1).optimizer), p1 - lr * buf, rtol=0, atol=1e-12)

    lr, (b1, b2), eps = t["alternate"]["apn"]["lr"], (0.9, 0.999), 1e-8
    m = v = torch.zeros_like(p0)
    p = p0.clone()
    for k, g in enumerate(grads, start=1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**k)) / ((v / (1 - b2**k)).sqrt() + eps)
    assert torch.allclose(two_steps(AlternateAPN(cfg, 0).optimizer), p, rtol=0, atol=1e-12)


def test_resume_mid_alternate_ends_with_the_same_weights(data_root, tmp_path):
    full = make_trainer(data_root, tmp_path / "full")
    full.run()
    # stop at the first epoch end inside round 1's alternate_apn, then resume in a new trainer
    stop_step = next(h["step"] for h in full.progress.history if h["phase"] == "alternate_apn[round 1]")
    part = make_trainer(data_root, tmp_path / "part")
    part.run(stop_after_step=stop_step)
    ckpt = load_checkpoint(tmp_path / "part" / "last.pt")
    assert ckpt["phase"] == "alternate_apn[round 1]" and ckpt["progress"]["step"] == stop_step
    resumed = make_trainer(data_root, tmp_path / "part")
    resumed.resume(str(tmp_path / "part" / "last.pt"))
    assert resumed.progress.step == stop_step
    assert resumed.current_phase().state_dict() == ckpt["phase_state"]  # the plateau counters, the phase's own
    assert set(ckpt["phase_state"]) == {"best_loss", "bad_epochs"} and "bad_epochs" not in ckpt["progress"]
    resumed.run()
    assert resumed.progress.step == full.progress.step
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)

    # a last.pt of the former layout: the proposers under "apns", the plateau counters in the progress
    old = dict(ckpt, model={k.replace("proposers.", "apns.", 1): v for k, v in ckpt["model"].items()},
               progress={**ckpt["progress"], **ckpt.pop("phase_state")})
    assert any(k.startswith("apns.") for k in old["model"])
    torch.save(old, tmp_path / "part" / "last.pt")
    former = make_trainer(data_root, tmp_path / "part")
    former.resume(str(tmp_path / "part" / "last.pt"))
    assert former.current_phase().state_dict() == {k: old["progress"][k] for k in ("best_loss", "bad_epochs")}
    former.run()
    assert [(h["phase"], h["epoch"]) for h in former.progress.history] == \
        [(h["phase"], h["epoch"]) for h in full.progress.history]
    for (k, a), b in zip(full.model.state_dict().items(), former.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_checkpoint_from_another_architecture_is_refused(data_root, tmp_path):
    trainer = make_trainer(data_root, tmp_path)
    trainer.save("last.pt")
    other = make_trainer(data_root, tmp_path / "other", extra=["model.width=8"])
    with pytest.raises(CheckpointError, match="model.width"):
        other.resume(str(tmp_path / "last.pt"))


def test_eval_writes_every_metric_key(data_root, tmp_path, capsys):
    import json

    trainer = make_trainer(data_root, tmp_path)
    trainer.run()
    capsys.readouterr()
    code, out, err = call_main(load_tool("eval").main, ["--checkpoint", str(tmp_path / "best.pt")], capsys)
    assert code == 0, err
    assert "fused 1+2+3" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("acc_scale1", "acc_scale2", "acc_scale3", "acc_fused12", "acc_fused123", "per_class_acc",
                "confusion_matrix", "part_hit_scale2", "part_hit_scale3", "iou_object_scale2"):
        assert metrics[key] is not None, key
    assert metrics["hit_parts"] == ["crest"] and metrics["split"] == "test"
    assert len(metrics["confusion_matrix"]["scale1"]) == 3
    assert 0.0 <= metrics["part_hit_scale2"] <= 1.0


def test_train_cli_reports_bad_config_key_before_any_work(tmp_path, capsys):
    code, _, err = call_main(load_tool("train").main, ["--config", "experiments/configs/fgsynth_default.yaml", "--work-dir",
                                                       str(tmp_path / "wd"), "--opts", "train.alternate.roundz=2"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "train.alternate.roundz" in err and "rounds" in err and not (tmp_path / "wd").exists()


def test_paper_config_without_data_or_weights_says_what_to_put_where(tmp_path, monkeypatch, capsys):
    main = load_tool("train").main
    base = ["--config", "experiments/configs/cub200_vgg19.yaml", "--work-dir", str(tmp_path / "wd")]
    code, _, err = call_main(main, base + ["--opts", f"data.root={tmp_path / 'nodata'}"], capsys)
    assert code == 2 and "CUB_200_2011/images.txt" in err and "CUB_200_2011.tgz" in err

    # with a (tiny, CUB-format) dataset present, the missing ImageNet weights are named next
    from raccnn.data.synthetic import generate_fgsynth

    generate_fgsynth(tmp_path / "cub", classes=2, images_per_class=4, size=96)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    code, _, err = call_main(main, base + ["--opts", f"data.root={tmp_path / 'cub'}", "data.resize=96", "data.crop=96",
                                           "data.val_fraction=0.5", "data.num_workers=0", "data.hit_parts=[crest]"],
                             capsys)
    assert code == 2 and "vgg19-dcbb9e9d.pth" in err and str(tmp_path / "torch") in err


def test_resume_auto_refuses_a_work_dir_of_another_config(data_root, tmp_path, capsys):
    trainer = make_trainer(data_root, tmp_path / "wd")
    trainer.save("last.pt")
    before = (tmp_path / "wd" / "last.pt").read_bytes()
    argv = ["--config", "experiments/configs/fgsynth_default.yaml", "--work-dir", str(tmp_path / "wd"), "--resume", "auto",
            "--opts", *TINY, f"data.root={data_root}", "train.fusion.epochs=2"]
    code, _, err = call_main(load_tool("train").main, argv, capsys)
    assert code == 2 and "train.fusion.epochs: 1 -> 2" in err
    assert (tmp_path / "wd" / "last.pt").read_bytes() == before  # nothing already written is lost


def test_fresh_start_in_a_used_work_dir_is_refused(data_root, tmp_path, capsys):
    trainer = make_trainer(data_root, tmp_path / "wd")
    trainer.save("last.pt")
    argv = ["--config", "experiments/configs/fgsynth_default.yaml", "--work-dir", str(tmp_path / "wd"),
            "--opts", *TINY, f"data.root={data_root}"]
    code, _, err = call_main(load_tool("train").main, argv, capsys)
    assert code == 2 and "already holds a run" in err and "--resume auto" in err


def test_oracle_without_a_hit_part_is_a_config_error(data_root, tmp_path):
    from raccnn.config import ConfigError

    with pytest.raises(ConfigError, match="model.proposer: 'oracle' needs data.hit_parts"):
        make_trainer(data_root, tmp_path, extra=["model.proposer=oracle", "data.hit_parts=[]"])
    with pytest.raises(ConfigError, match=r"data.hit_parts: \['beak'\] are not parts of the dataset \(parts: \['body'"):
        make_trainer(data_root, tmp_path, extra=["model.proposer=oracle", "data.hit_parts=[beak]"])


def test_a_hit_part_the_dataset_lacks_is_a_config_error_before_training(data_root, tmp_path):
    from raccnn.config import ConfigError

    with pytest.raises(ConfigError, match=r"data.hit_parts: \['tial'\] are not parts of the dataset"):
        make_trainer(data_root, tmp_path, extra=["data.hit_parts=[crest, tial]"])
    make_trainer(data_root, tmp_path, extra=["data.hit_parts=[tail]"])


def test_eval_on_val_keeps_the_test_metrics(data_root, tmp_path):
    import json

    from raccnn.engine.inference import run_evaluation

    trainer = make_trainer(data_root, tmp_path, extra=["train.alternate.rounds=1"])
    trainer.run()
    test, _ = run_evaluation(tmp_path / "best.pt", "test")
    val, _ = run_evaluation(tmp_path / "best.pt", "val")
    assert json.loads((tmp_path / "metrics.json").read_text())["split"] == "test"
    assert json.loads((tmp_path / "metrics_val.json").read_text())["num_images"] == val["num_images"]
    assert test["num_images"] != val["num_images"]


def test_a_non_finite_loss_stops_the_run_and_nothing_non_finite_is_saved(data_root, tmp_path):
    from raccnn.errors import DivergenceError

    trainer = make_trainer(data_root, tmp_path, extra=["train.alternate.rounds=1"])
    fusion = trainer.plan[-1]
    real_loss = fusion.loss

    def exploding(model, images, target, part_boxes):
        loss, terms = real_loss(model, images, target, part_boxes)
        return loss * float("inf"), terms

    fusion.loss = exploding
    with pytest.raises(DivergenceError, match=r"training diverged in fusion, epoch 1, step \d+: loss .*train.fusion.lr"):
        trainer.run()
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["phase"] == "fusion" and last["progress"]["epoch"] == 0  # the last finished epoch
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert (tmp_path / "best_alternate.pt").exists() and not (tmp_path / "best.pt").exists()


@pytest.mark.parametrize("select_from_round, kept_round", [(1, 1), (2, 2)])
def test_best_alternate_keeps_only_epochs_from_select_from_round_on(data_root, tmp_path, monkeypatch,
                                                                      select_from_round, kept_round):
    from raccnn.engine.phases import Alternating

    scores = iter(range(100, 0, -1))  # every epoch scores below the one before: round 1 holds the best
    monkeypatch.setattr(Alternating, "score", lambda self, model, val: next(scores) / 100)
    trainer = make_trainer(data_root, tmp_path, extra=["train.alternate.rounds=2",
                                                       f"train.alternate.select_from_round={select_from_round}"])
    trainer.run()
    best = load_checkpoint(tmp_path / "best_alternate.pt")
    alternation = [h for h in trainer.progress.history if h["phase"].startswith("alternate_")]
    first_kept = next(h for h in alternation if h["phase"].endswith(f"[round {kept_round}]"))
    assert best["phase"] == first_kept["phase"] == f"alternate_cls[round {kept_round}]"
    assert best["progress"]["step"] == first_kept["step"]  # the first epoch of that round, the best one allowed


def test_resume_accepts_a_changed_learning_rate_only():
    from raccnn.engine.run import check_same_run

    from raccnn.config import load_config

    saved = load_config("experiments/configs/fgsynth_default.yaml")
    check_same_run(saved, load_config("experiments/configs/fgsynth_default.yaml", ["train.fusion.lr=0.01"]), "x")
    with pytest.raises(CheckpointError, match="train.fusion.epochs"):
        check_same_run(saved, load_config("experiments/configs/fgsynth_default.yaml", ["train.fusion.epochs=5"]), "x")
    # a checkpoint written before a key existed ran at that key's default, and only there
    older = {**saved, "model": {k: v for k, v in saved["model"].items() if k != "fusion"}}
    check_same_run(older, load_config("experiments/configs/fgsynth_default.yaml", ["model.fusion=features"]), "x")
    with pytest.raises(CheckpointError, match="model.fusion: 'features' -> 'log_probs'"):
        check_same_run(older, load_config("experiments/configs/fgsynth_default.yaml", ["model.fusion=log_probs"]), "x")
    # how the numbers are computed may change: a run saved with the crop's former default, resumed compiled
    gathered = load_config("experiments/configs/fgsynth_default.yaml", ["model.crop.impl=gather"])
    check_same_run(gathered, load_config("experiments/configs/fgsynth_default.yaml",
                                         ["train.compile=true", "train.channels_last=true"]), "x")


@pytest.mark.parametrize("opt, message", [
    ("train.alternate.cls.lr=.nan", "train.alternate.cls.lr: nan is not a finite number"),
    ("train.pretrain_cls.lr=.inf", "train.pretrain_cls.lr: inf is not a finite number"),
    ("train.fusion.lr=1e6", "train.fusion.lr: 1000000.0 is above 10.0"),
])
def test_learning_rates_that_cannot_be_meant_are_refused(opt, message):
    from raccnn.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config("experiments/configs/fgsynth_default.yaml", [opt])
    if "1e6" in opt:
        assert load_config("experiments/configs/fgsynth_default.yaml", [opt, "train.force_lr=true"])


def test_fusion_restarts_from_the_alternating_best_after_a_crash_between_writes(data_root, tmp_path):
    """A kill after the fused best.pt is written and before last.pt must not change the result."""
    full = make_trainer(data_root, tmp_path / "full", extra=["train.alternate.rounds=1"])
    full.run()
    part = make_trainer(data_root, tmp_path / "part", extra=["train.alternate.rounds=1"])
    save = part.save

    def crash_after_best(name):
        save(name)
        if name == "best.pt":
            raise KeyboardInterrupt  # the process dies before last.pt is written

    part.save = crash_after_best
    with pytest.raises(KeyboardInterrupt):
        part.run()
    resumed = make_trainer(data_root, tmp_path / "part", extra=["train.alternate.rounds=1"])
    resumed.resume(str(tmp_path / "part" / "last.pt"))
    resumed.run()
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_stale_temporaries_are_removed_and_resume_outside_the_work_dir_refused(data_root, tmp_path, capsys):
    (tmp_path / "wd").mkdir()
    (tmp_path / "wd" / ".last.pt.0123abcd.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "wd" / "notes.tmp").write_text("mine")
    trainer = make_trainer(data_root, tmp_path / "wd")
    assert sorted(p.name for p in (tmp_path / "wd").iterdir() if "tmp" in p.name) == ["notes.tmp"]
    trainer.save("last.pt")
    code, _, err = call_main(load_tool("train").main, ["--config", "experiments/configs/fgsynth_default.yaml", "--work-dir",
                                                       str(tmp_path / "new"), "--resume", str(tmp_path / "wd" / "last.pt"),
                                                       "--opts", *TINY, f"data.root={data_root}"], capsys)
    assert code == 2 and "outside the work dir" in err


def test_rank_loss_diagnostics_are_logged_every_epoch(data_root, tmp_path, caplog):
    import logging
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    trainer = make_trainer(data_root, tmp_path)
    with caplog.at_level(logging.INFO, logger="raccnn"):
        trainer.run()
    epochs = trainer.progress.history
    assert all(0 <= e["rank_active_1_2"] <= 1 and 0 <= e["rank_active_2_3"] <= 1 for e in epochs)
    assert "apn1_dtx" not in epochs[0] and all("apn1_dtx" in e and e["apn2_dtl"] >= 0 for e in epochs[1:])
    apn_lines = [r.getMessage() for r in caplog.records if "active rank hinges" in r.getMessage()]
    assert len(apn_lines) == len(epochs)
    assert sum("train 1_2=" in line for line in apn_lines) == sum(e["phase"].startswith(("alternate_apn", "init_apn"))
                                                                  for e in epochs)
    events = EventAccumulator(str(tmp_path)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_epoch/rank_active_1_2", "train_epoch/grad_norm", "val/rank_active_2_3", "apn1/dtx"} <= tags
    grad_norms = [s.value for s in events.Scalars("train_epoch/grad_norm")]
    assert len(grad_norms) == len(epochs) and all(v > 0 for v in grad_norms)


def test_joint_phase_trains_scales_and_apns_together(data_root, tmp_path):
    trainer = make_trainer(data_root, tmp_path, ["train.alternate.rounds=0", "train.joint.epochs=2",
                                                 "train.joint.rank_weight=0.5"])
    assert [p.label for p in trainer.plan] == ["pretrain_cls", "init_apn", "joint", "fusion"]
    joint = trainer.plan[2]
    trainer.run(stop_after_step=trainer.progress.step + 1)
    while trainer.plan[trainer.progress.phase_index] is not joint:
        trainer.run(stop_after_step=trainer.progress.step + 1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run(stop_after_step=trainer.progress.step + 1)  # one joint epoch
    after = trainer.model.state_dict()
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"scales", "proposers"}
    assert all(e["phase"] != "joint" or "rank_active_1_2" in e for e in trainer.progress.history)


def test_log_prob_fusion_is_fitted_on_validation_without_training_steps(data_root, tmp_path, caplog):
    import torch.nn.functional as F

    from raccnn.engine.inference import collect_outputs

    trainer = make_trainer(data_root, tmp_path, extra=["train.alternate.rounds=1", "model.fusion=log_probs"])
    with caplog.at_level("INFO", logger="raccnn"):
        trainer.run()
    history = trainer.progress.history
    assert history[-1]["phase"] == "fusion" and history[-1]["step"] == history[-2]["step"]  # no training step
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["phase"] == "fusion"
    trainer.model.load_state_dict(best["model"])
    head = trainer.model.fusion["123"]
    assert not torch.allclose(head.weights(), torch.ones(3))  # moved from the initial product
    # the weights minimise the validation NLL: lower than with every weight at 1
    out = collect_outputs(trainer.model, trainer.val_loader, trainer.device)
    log_probs = [F.log_softmax(logits, 1) for logits in out.logits]
    fitted = F.cross_entropy(out.fused["123"], out.label).item()
    assert fitted < F.cross_entropy(sum(log_probs), out.label).item()
    assert "fusion 123: per-scale weights" in caplog.text and "fitted on 6 validation images" in caplog.text
    assert best["progress"]["best"]["best.pt"] == pytest.approx(history[-1]["acc_fused123"])
    # TensorBoard: every tag of a log_probs run is written, and no fusion training loss
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from raccnn.engine.visualize import scalar_tags

    tags = set(EventAccumulator(str(tmp_path), size_guidance={"scalars": 0}).Reload().Tags()["scalars"])
    assert set(scalar_tags(3, "log_probs")) <= tags and not any(t.startswith("train/ce_fused") for t in tags)
