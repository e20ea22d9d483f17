"""What model selection keeps: each rule for choosing the alternation's epoch, measured on the test
split, from runs trained with ``train.keep_epochs=true``.

    python experiments/selection.py RUN [RUN ...] [--rules accuracy nll last smoothed] [--csv OUT]

A run's kept epochs (RUN/epochs/*.pt, every epoch that competed for best_alternate.pt, in training
order) are evaluated once on the validation and the test split; their outputs are cached in
RUN/epochs/outputs.pt. A rule picks one epoch from the validation outputs alone. The picked
epoch's ``log_probs`` fusion is fitted on its validation outputs (``models/fusion.py``, as
``model.fusion: log_probs`` does, with the run's ``train.fusion.l2``) and every head and the part
hit of scale 2 are measured on the test split.

Rules:
  accuracy   the trainer's (phases.py): the best mean validation accuracy over the scales, the
             first on a tie; on a log_probs run it repeats best.pt's test numbers
  nll        the lowest validation cross-entropy summed over the scales
  last       the last kept epoch
  smoothed   the best mean of an epoch's and the previous epoch's (same phase) accuracy
  hindsight  not a rule: the epoch meeting the most targets on the test split (then the best
             fused accuracy), an upper bound on what any rule on these epochs could keep

Targets (docs/results.md, "Fewer images per class"): scale 2 >= scale 1 + 15 points, fused >= the
best scale, part hit at scale 2 >= 90 %. Prints one line per run and rule, per run how well the
validation split ranks its epochs (Spearman's rho between the mean scale accuracy on validation
and on test over the kept epochs, scipy's ``spearmanr``) and, per rule, the targets missed;
``--csv`` writes the same per run and rule.
"""
from __future__ import annotations

import argparse
import csv
import glob
import math
import os
import sys

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch.utils.data import DataLoader

from raccnn.data.build import build_dataset, prepare_data
from raccnn.data.collate import collate_samples
from raccnn.engine.checkpoint import load_checkpoint, save_checkpoint
from raccnn.engine.evaluate import hit_centres, part_hit_rate
from raccnn.engine.inference import build_trained_model, collect_outputs, load_training_checkpoint
from raccnn.errors import RaccnnError
from raccnn.fileio import atomic_open
from raccnn.models.fusion import LogProbFusion, fit_log_prob_weights

RULES = ("accuracy", "nll", "last", "smoothed", "hindsight")
CACHE = "outputs.pt"
COLUMNS = ("acc_scale1", "acc_scale2", "acc_scale3", "acc_fused123", "part_hit_scale2")


class SelectionError(RaccnnError):
    pass


def kept_epochs(run: str) -> list[str]:
    paths = sorted(p for p in glob.glob(os.path.join(run, "epochs", "*.pt")) if os.path.basename(p) != CACHE)
    if not paths:
        raise SelectionError(f"{run}: no kept epochs in {os.path.join(run, 'epochs')}; train the run with "
                             f"--opts train.keep_epochs=true")
    return paths


def split_outputs(model, dataset, cfg: dict) -> dict:
    loader = DataLoader(dataset, batch_size=cfg["data"]["eval_batch_size"], num_workers=cfg["data"]["num_workers"],
                        collate_fn=collate_samples)
    out = collect_outputs(model, loader, "cpu", "selection")
    _, has, centres = hit_centres(out, dataset.part_names, cfg["data"]["hit_parts"])
    return {"logits": [x.float() for x in out.logits], "label": out.label,
            "part_hit": part_hit_rate(out.abs_boxes[0], has, centres) if out.abs_boxes else None}


def epoch_outputs(run: str) -> list[dict]:
    """Per kept epoch: its file name, its phase, and the scales' logits, the labels and the scale-2
    part hit on the validation and the test split, measured on the CPU (cached in epochs/outputs.pt)."""
    paths = kept_epochs(run)
    names = [os.path.basename(p) for p in paths]
    cache = os.path.join(run, "epochs", CACHE)
    if os.path.exists(cache):
        saved = load_checkpoint(cache)
        if saved.get("names") == names:
            return saved["epochs"]
    first = load_training_checkpoint(paths[0])
    cfg = first["config"]
    data = prepare_data(cfg)
    splits = {split: build_dataset(cfg, split, data) for split in ("val", "test")}
    if not len(splits["val"]):
        raise SelectionError(f"{run}: the run has no validation split (data.val_fraction 0): no rule can choose")
    epochs = []
    for path in paths:
        model, ckpt = build_trained_model(load_training_checkpoint(path), "cpu", splits["val"].part_names)
        record = {"name": os.path.basename(path), "phase": ckpt["phase"], "fusion_l2": cfg["train"]["fusion"]["l2"]}
        record.update({split: split_outputs(model, ds, cfg) for split, ds in splits.items()})
        epochs.append(record)
    save_checkpoint(cache, {"names": names, "epochs": epochs})
    return epochs


def accuracies(outputs: dict) -> list[float]:
    return [float((x.argmax(1) == outputs["label"]).double().mean()) for x in outputs["logits"]]


def mean_accuracy(epoch: dict, split: str = "val") -> float:
    accs = accuracies(epoch[split])
    return sum(accs) / len(accs)


def fused_logits(epoch: dict, split: str) -> torch.Tensor:
    head = LogProbFusion(len(epoch["val"]["logits"]))
    fit_log_prob_weights(head, epoch["val"]["logits"], epoch["val"]["label"], l2=epoch.get("fusion_l2", 0.0))
    with torch.no_grad():
        return head([], epoch[split]["logits"])


def on_test(epoch: dict) -> dict:
    """Test accuracy of every scale and of the fitted fusion, and the scale-2 part hit (fractions)."""
    test = epoch["test"]
    numbers = {f"acc_scale{s}": a for s, a in enumerate(accuracies(test), start=1)}
    numbers["acc_fused" + "".join(str(s) for s in range(1, len(test["logits"]) + 1))] = float(
        (fused_logits(epoch, "test").argmax(1) == test["label"]).double().mean())
    numbers["part_hit_scale2"] = test["part_hit"]
    return numbers


def targets_met(n: dict) -> tuple[bool, bool, bool]:
    """(scale 2 >= scale 1 + 15 points, fused >= the best scale, part hit >= 90 %), 1e-9 for float ties."""
    scales = [v for k, v in n.items() if k.startswith("acc_scale")]
    fused = next(v for k, v in n.items() if k.startswith("acc_fused"))
    hit = n["part_hit_scale2"]
    return (n["acc_scale2"] >= n["acc_scale1"] + 0.15 - 1e-9, fused >= max(scales) - 1e-9,
            hit is not None and hit >= 0.9 - 1e-9)


def ranking_agreement(epochs: list[dict]) -> float:
    """Spearman's rho between the epochs' mean scale accuracy on validation and on test (nan when
    either is constant)."""
    val = [mean_accuracy(e) for e in epochs]
    test = [mean_accuracy(e, "test") for e in epochs]
    if len(set(val)) < 2 or len(set(test)) < 2:
        return math.nan
    return float(spearmanr(val, test).statistic)


def first_best(keys: list) -> int:
    """Index of the first largest key: the trainer keeps an epoch only when it beats the best so far."""
    best = 0
    for i, k in enumerate(keys):
        if k > keys[best]:
            best = i
    return best


def choose(rule: str, epochs: list[dict]) -> int:
    if rule == "accuracy":
        return first_best([mean_accuracy(e) for e in epochs])
    if rule == "nll":
        return first_best([-sum(F.cross_entropy(x, e["val"]["label"]).item() for x in e["val"]["logits"])
                           for e in epochs])
    if rule == "last":
        return len(epochs) - 1
    if rule == "smoothed":
        acc = [mean_accuracy(e) for e in epochs]
        return first_best([(acc[i] + acc[i - 1 if i and epochs[i - 1]["phase"] == e["phase"] else i]) / 2
                           for i, e in enumerate(epochs)])
    if rule == "hindsight":
        numbers = [on_test(e) for e in epochs]
        return first_best([(sum(targets_met(n)), next(v for k, v in n.items() if k.startswith("acc_fused")))
                           for n in numbers])
    raise ValueError(f"unknown rule {rule!r}; choose from {list(RULES)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="work dirs of runs trained with train.keep_epochs=true")
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    parser.add_argument("--csv", help="write one line per run and rule here")
    args = parser.parse_args(argv)
    try:
        per_run = {run: epoch_outputs(run) for run in args.runs}
    except RaccnnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows, missed = [], {rule: 0 for rule in args.rules}
    for run, epochs in per_run.items():
        rho = ranking_agreement(epochs)
        print(f"{run}: {len(epochs)} kept epochs; validation ranks them against test with Spearman's rho {rho:.2f}")
        for rule in args.rules:
            i = choose(rule, epochs)
            n = on_test(epochs[i])
            met = targets_met(n)
            missed[rule] += 3 - sum(met)
            rows.append({"run": run, "rule": rule, "epoch": epochs[i]["name"], "val_test_spearman": rho, **n,
                         "targets_met": "".join("y" if m else "n" for m in met)})
            shown = " / ".join("-" if n[k] is None else f"{100 * n[k]:.1f}" for k in COLUMNS if k in n)
            print(f"{run}  {rule:9s} {epochs[i]['name']:34s} {shown}  {rows[-1]['targets_met']}")
    for rule, count in missed.items():
        print(f"{rule}: {count} of {3 * len(per_run)} targets missed over {len(per_run)} run(s)")
    if args.csv:
        with atomic_open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
