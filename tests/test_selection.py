"""experiments/selection.py and train.keep_epochs: the kept epochs, each rule's pick by hand, the
trainer's rule repeating best.pt, and a run without kept epochs refused."""
import json
import os

import pytest
import torch

from conftest import TINY, call_main, load_script, load_tool
from raccnn.engine.checkpoint import load_checkpoint

S = load_script("experiments/selection.py")


def epoch(phase, val_logits, labels=(0, 1)):
    label = torch.tensor(labels)
    return {"name": phase, "phase": phase, "val": {"logits": [torch.tensor(x, dtype=torch.float) for x in val_logits],
                                                    "label": label}}


def test_each_rule_picks_by_hand():
    right, wrong = [[2.0, 0.0], [0.0, 2.0]], [[0.0, 2.0], [2.0, 0.0]]
    sure = [[9.0, 0.0], [0.0, 9.0]]
    epochs = [epoch("a", [right, wrong]),  # mean accuracy 0.5
              epoch("a", [right, right]),  # 1.0, first best
              epoch("b", [sure, sure]),  # 1.0 again (a tie: not kept), lowest cross-entropy
              epoch("b", [wrong, wrong])]  # 0.0, last
    assert S.choose("accuracy", epochs) == 1
    assert S.choose("nll", epochs) == 2
    assert S.choose("last", epochs) == 3
    # smoothed: (0.5 + 0.5) / 2, (1 + 0.5) / 2, (1 + 1) / 2 (a new phase has no previous), (0 + 1) / 2
    assert S.choose("smoothed", epochs) == 2
    assert S.first_best([0.2, 0.7, 0.7, 0.1]) == 1


def test_the_ranking_agreement_by_hand():
    right, wrong = [[2.0, 0.0], [0.0, 2.0]], [[0.0, 2.0], [2.0, 0.0]]
    half = [[2.0, 0.0], [2.0, 0.0]]
    epochs = [epoch("a", [wrong]), epoch("a", [half]), epoch("a", [right])]  # validation 0, 0.5, 1
    for e, test in zip(epochs, ([half], [right], [wrong])):  # test 0.5, 1, 0: ranks 2 3 1 against 1 2 3
        e["test"] = {"logits": [torch.tensor(x) for x in test], "label": torch.tensor([0, 1])}
    assert S.ranking_agreement(epochs) == pytest.approx(1 - 6 * (1 + 1 + 4) / (3 * (9 - 1)))  # -0.5


def test_the_targets_by_hand():
    n = {"acc_scale1": 0.40, "acc_scale2": 0.55, "acc_scale3": 0.60, "acc_fused123": 0.60, "part_hit_scale2": 0.90}
    assert S.targets_met(n) == (True, True, True)
    assert S.targets_met({**n, "acc_scale2": 0.549, "acc_fused123": 0.599, "part_hit_scale2": 0.899}) == \
        (False, False, False)
    assert S.targets_met({**n, "part_hit_scale2": None})[2] is False


def test_kept_epochs_and_the_trainers_rule_repeat_best_pt(tmp_path, capsys):
    """A tiny run with train.keep_epochs keeps every alternating epoch (weights only) in training
    order; the accuracy rule picks the epoch best_alternate.pt holds, and its test numbers are
    best.pt's (model.fusion log_probs, fitted on the same validation outputs)."""
    work = tmp_path / "run"
    train = load_tool("train").main
    data = tmp_path / "data"
    # 40 images per class: validation accuracy moves between the alternating epochs (0.333 to 0.444)
    assert train(["--config", "experiments/configs/fgsynth_default.yaml", "--work-dir", str(work), "--eval-split",
                  "test", "--opts", *TINY, f"data.root={data}", "train.keep_epochs=true", "model.fusion=log_probs",
                  "data.synth.images_per_class=40", "train.pretrain_cls.epochs=4", "train.alternate.cls.max_epochs=3"]) == 0
    kept = sorted(os.listdir(work / "epochs"))
    history = [h for h in load_checkpoint(work / "last.pt")["progress"]["history"] if h["phase"].startswith("alternate")]
    assert len(kept) == len(history) and kept[0] == "006_alternate_cls_round_1_epoch1.pt"  # 4 + 1 epochs before it
    assert set(load_checkpoint(work / "epochs" / kept[0])) == set(S_KEYS)

    code, out, err = call_main(S.main, [str(work), "--csv", str(tmp_path / "sel.csv")], capsys)
    assert code == 0, err
    epochs = S.epoch_outputs(str(work))  # from the cache now
    # the validation outputs are the trainer's: the same mean accuracy in every epoch of its history
    assert [S.mean_accuracy(e) for e in epochs] == pytest.approx(
        [sum(h[f"acc_scale{s}"] for s in (1, 2, 3)) / 3 for h in history])
    pick = S.choose("accuracy", epochs)
    assert 0 < pick < len(epochs) - 1  # neither end: the rule's choice is tested, not a default
    best = load_checkpoint(work / "best_alternate.pt")["model"]
    picked = load_checkpoint(work / "epochs" / epochs[pick]["name"])["model"]
    assert all(torch.equal(best[k], picked[k]) for k in best)
    metrics = json.loads((work / "metrics.json").read_text())
    numbers = S.on_test(epochs[pick])
    for key in S.COLUMNS:
        assert numbers[key] == pytest.approx(metrics[key], abs=1e-6), key
    assert "kept epochs; validation ranks them against test with Spearman's rho" in out
    assert "accuracy: " in out and (tmp_path / "sel.csv").read_text().count("\n") == 1 + len(S.RULES)


S_KEYS = ("model", "progress", "phase", "config", "num_classes", "classes", "part_names")


def test_a_run_without_kept_epochs_is_refused(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    code, _, err = call_main(S.main, [str(tmp_path / "run")], capsys)
    assert code == 2 and err.strip() == (f"error: {tmp_path / 'run'}: no kept epochs in {tmp_path / 'run' / 'epochs'}; "
                                         "train the run with --opts train.keep_epochs=true")
