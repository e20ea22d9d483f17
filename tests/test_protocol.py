"""The protocol most published numbers use: train on all training images, no validation split
(``data.val_fraction: 0``); the phases then run their max epochs and the schedule's end is kept."""
import pytest
import torch
from conftest import DEFAULT_CONFIG, TINY, make_trainer

from raccnn.config import load_config
from raccnn.data.build import build_datasets
from raccnn.data.standin import write_aircraft_standin
from raccnn.engine.checkpoint import load_checkpoint
from raccnn.engine.inference import run_evaluation
from raccnn.errors import ConfigError


def test_all_training_images_no_validation_and_the_schedules_end_kept(data_root, tmp_path, caplog):
    with_val = build_datasets(load_config(DEFAULT_CONFIG, TINY + [f"data.root={data_root}"]))
    trainer = make_trainer(data_root, tmp_path, ["data.val_fraction=0"])
    assert len(with_val["train"]) == 18 and len(with_val["val"]) == 6
    assert len(trainer.train_loader.dataset) == 24 and len(trainer.val_loader.dataset) == 0  # 8 per class
    with caplog.at_level("INFO", logger="raccnn"):
        trainer.run()
    history = trainer.progress.history
    # no plateau without a validation: every alternating sub-phase runs its max_epochs (2 in TINY)
    for label in ("alternate_cls[round 1]", "alternate_apn[round 1]", "alternate_cls[round 2]", "alternate_apn[round 2]"):
        assert max(h["epoch"] for h in history if h["phase"] == label) == 2
    assert not any("acc_scale1" in h for h in history) and "| no validation split" in caplog.text
    # best_alternate.pt holds the alternation's last epoch, best.pt the end of the schedule
    alternate = load_checkpoint(tmp_path / "best_alternate.pt")
    last_alternating = [h for h in history if h["phase"].startswith("alternate")][-1]
    assert alternate["phase"] == last_alternating["phase"] and alternate["progress"]["step"] == last_alternating["step"]
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert best["progress"]["step"] == last["progress"]["step"] == history[-1]["step"]
    assert all(torch.equal(best["model"][k], v) for k, v in last["model"].items())
    metrics, table = run_evaluation(tmp_path / "best.pt", "test")
    assert metrics["selection"].startswith("the last epoch of the schedule") and "Model kept: the last epoch" in table


def test_a_run_with_validation_says_it_keeps_the_best_validation_epoch(data_root, tmp_path):
    trainer = make_trainer(data_root, tmp_path, ["train.alternate.rounds=1"])
    trainer.run()
    assert run_evaluation(tmp_path / "best.pt", "test")[0]["selection"] == "the best validation epoch"


@pytest.mark.parametrize("opts, culprit", [
    (["data.val_fraction=0", "model.fusion=log_probs"], "model.fusion: log_probs fits its weights on the validation"),
    (["data.val_fraction=0", "eval.split=val"], "eval.split: 'val' is empty with data.val_fraction 0"),
    (["data.val_fraction=-0.1"], "data.val_fraction"),
])
def test_what_needs_a_validation_split_is_refused_without_one(opts, culprit):
    with pytest.raises(ConfigError, match=culprit):
        load_config(DEFAULT_CONFIG, opts)


def test_aircraft_trains_on_trainval_without_validation(tmp_path):
    write_aircraft_standin(tmp_path)  # 4 variants x (2 train, 1 val, 1 test)
    cfg = load_config("experiments/configs/aircraft_vgg19.yaml",
                      [f"data.root={tmp_path}", "data.val_fraction=0", "model.pretrained=false"])
    datasets = build_datasets(cfg)
    assert {s: len(d) for s, d in datasets.items()} == {"train": 12, "val": 0, "test": 4}
    assert datasets["val"].classes == datasets["train"].classes
