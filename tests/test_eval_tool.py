"""tools/eval.py on tiny checkpoints of a folder dataset: one metrics file per checkpoint and split,
class names checked against the checkpoint's, a dataset that moved."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEFAULT_CONFIG, TINY_MODEL, load_tool
from PIL import Image

from raccnn.config import load_config
from raccnn.engine.checkpoint import save_checkpoint
from raccnn.models import build_racnn

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["alpha", "beta", "gamma"]




@pytest.fixture(scope="module")
def evaluate():
    return load_tool("eval").main


def write_run(root: Path) -> Path:
    """``root/data``: 3 class folders of 8 noise images; ``root/run``: ``best.pt`` and
    ``best_alternate.pt``, two differently initialised tiny models trained (nominally) on it."""
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / "data" / c).mkdir(parents=True)
        for j in range(8):
            Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(root / "data" / c / f"{j}.png")
    cfg = load_config(REPO / DEFAULT_CONFIG, TINY_MODEL + ["data.dataset=folder", f"data.root={root / 'data'}",
                                                           "data.hit_parts=[]", "data.val_fraction=0.5"])
    (root / "run").mkdir()
    for seed, name in enumerate(("best.pt", "best_alternate.pt")):
        torch.manual_seed(seed)
        save_checkpoint(root / "run" / name, {"model": build_racnn(cfg, num_classes=3).state_dict(), "config": cfg,
                                              "num_classes": 3, "classes": CLASSES, "phase": "fusion"})
    return root / "run"


@pytest.fixture()
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("eval"))


def metrics(path: Path) -> dict:
    return json.loads(path.read_text())


def test_each_checkpoint_and_split_keeps_its_own_metrics_file(evaluate, run, capsys):
    for name in ("best.pt", "best_alternate.pt"):
        for split in ("test", "val"):
            assert evaluate(["--checkpoint", str(run / name), "--split", split]) == 0
    capsys.readouterr()
    files = {"metrics.json": ("best.pt", "test"), "metrics_val.json": ("best.pt", "val"),
             "metrics_best_alternate.json": ("best_alternate.pt", "test"),
             "metrics_best_alternate_val.json": ("best_alternate.pt", "val")}
    assert sorted(p.name for p in run.glob("metrics*.json")) == sorted(files)
    for file, (name, split) in files.items():
        m = metrics(run / file)
        assert (m["checkpoint"], m["split"], m["path"]) == (str(run / name), split, str(run / file))
    # the two models disagree somewhere, so each file holds its own checkpoint's numbers
    a, b = metrics(run / "metrics.json"), metrics(run / "metrics_best_alternate.json")
    assert a["confusion_matrix"] != b["confusion_matrix"]
    # and each metrics file has its per-image predictions beside it, named after it
    for file, (name, split) in files.items():
        m = metrics(run / file)
        predictions = run / file.replace("metrics", "predictions").replace(".json", ".csv")
        assert m["predictions"] == str(predictions)
        rows = list(csv.DictReader(open(predictions, newline="")))
        assert len(rows) == m["num_images"]
        assert all((run.parent / "data" / r["image"]).is_file() and r["image"].split("/")[0] == r["label_name"]
                   for r in rows)
        right = sum(r["fused123_pred"] == r["label"] for r in rows)
        assert m["acc_fused123"] == pytest.approx(right / len(rows))
    assert len(list(run.glob("predictions*.csv"))) == len(files)


@pytest.mark.parametrize("rename, shown", [
    ({"alpha": "zeta"}, "only in the checkpoint: ['alpha'], only in the dataset: ['zeta']"),
    ({"gamma": "gamma_v2"}, "only in the checkpoint: ['gamma'], only in the dataset: ['gamma_v2']"),
])
def test_a_renamed_class_folder_is_refused_before_anything_is_computed(evaluate, run, capsys, rename, shown):
    assert evaluate(["--checkpoint", str(run / "best.pt")]) == 0
    before = (run / "metrics.json").read_bytes()
    capsys.readouterr()
    for old, new in rename.items():
        (run.parent / "data" / old).rename(run.parent / "data" / new)
    assert evaluate(["--checkpoint", str(run / "best.pt")]) == 2
    out = capsys.readouterr()
    assert out.out == "" and len(out.err.strip().splitlines()) == 1, out.err
    assert out.err.startswith(f"error: {run / 'best.pt'}: the class names of the test split of {run.parent / 'data'} "
                              f"differ from those it was trained on: {shown}")
    assert (run / "metrics.json").read_bytes() == before


def test_the_same_class_names_in_another_order_are_refused(evaluate, run, capsys):
    ckpt = torch.load(run / "best.pt", weights_only=True)
    save_checkpoint(run / "swapped.pt", {**ckpt, "classes": ["beta", "alpha", "gamma"]})
    assert evaluate(["--checkpoint", str(run / "swapped.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "label 0 is 'beta' in the checkpoint, 'alpha' in the dataset" in err
    assert not list(run.glob("metrics*.json"))


def test_a_moved_dataset_is_found_with_data_root(evaluate, run, capsys):
    assert evaluate(["--checkpoint", str(run / "best.pt")]) == 0
    at_home = metrics(run / "metrics.json")
    moved = run.parent / "moved"
    shutil.move(run.parent / "data", moved)
    (run / "metrics.json").unlink()
    capsys.readouterr()
    assert evaluate(["--checkpoint", str(run / "best.pt")]) == 2  # data.root of the checkpoint is gone
    assert f"dataset folder {run.parent / 'data'} does not exist" in capsys.readouterr().err

    assert evaluate(["--checkpoint", str(run / "best.pt"), "--data-root", str(moved),
                     "--opts", "data.eval_batch_size=2", "data.num_workers=0"]) == 0
    there = metrics(run / "metrics.json")
    assert there["confusion_matrix"] == at_home["confusion_matrix"] and there["num_images"] == at_home["num_images"]

    (moved / "beta").rename(moved / "delta")  # the class names are still checked
    capsys.readouterr()
    assert evaluate(["--checkpoint", str(run / "best.pt"), "--data-root", str(moved)]) == 2
    assert "only in the dataset: ['delta']" in capsys.readouterr().err


@pytest.mark.parametrize("opt, message", [
    ("model.width=8", "error: option model.width: model.width is 4 in {ckpt} and shapes the weights it holds, "
                      "so it cannot become 8"),
    ("data.batchsize=2", "error: unknown key 'data.batchsize' (did you mean 'data.batch_size'?)"),
])
def test_opts_that_do_not_fit_the_checkpoint_are_one_line(evaluate, run, capsys, opt, message):
    assert evaluate(["--checkpoint", str(run / "best.pt"), "--opts", opt]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(message.format(ckpt=run / "best.pt")), err
    assert not list(run.glob("metrics*.json"))


def test_other_images_are_measured_into_their_own_folder_and_never_over_the_runs_files(evaluate, run, capsys, tmp_path):
    assert evaluate(["--checkpoint", str(run / "best.pt")]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    # data.max_images=3 scores 3 images, not the test split training scored: refused next to the checkpoint
    assert evaluate(["--checkpoint", str(run / "best.pt"), "--opts", "data.max_images=3"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and len(out.err.strip().splitlines()) == 1, out.err
    assert out.err.startswith(f"error: option data.max_images=3: {run / 'best.pt'} was trained and tested with "
                              "data.max_images 0, and its results next to it (metrics.json) would be replaced"), out.err
    assert "--out-dir" in out.err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    other = tmp_path / "other" / "test3"
    assert evaluate(["--checkpoint", str(run / "best.pt"), "--out-dir", str(other), "--opts", "data.max_images=3"]) == 0
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert sorted(p.name for p in other.iterdir()) == ["metrics.json", "predictions.csv"]
    m = metrics(other / "metrics.json")
    assert m["num_images"] == 3 != metrics(run / "metrics.json")["num_images"]
    assert (m["path"], m["predictions"], m["checkpoint"]) == (str(other / "metrics.json"), str(other / "predictions.csv"),
                                                              str(run / "best.pt"))
    assert len(list(csv.DictReader(open(other / "predictions.csv", newline="")))) == 3
    # an --out-dir that is a file is one line before any image is run
    (tmp_path / "a_file").write_text("mine")
    capsys.readouterr()
    assert evaluate(["--checkpoint", str(run / "best.pt"), "--out-dir", str(tmp_path / "a_file")]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.strip() == f"error: {tmp_path / 'a_file'}: --out-dir folder is a file, not a folder"
    assert (tmp_path / "a_file").read_text() == "mine"
    # the same images into another folder: the run's own numbers, file for file
    same = tmp_path / "same"
    assert evaluate(["--checkpoint", str(run / "best.pt"), "--out-dir", str(same)]) == 0
    assert metrics(same / "metrics.json")["confusion_matrix"] == metrics(run / "metrics.json")["confusion_matrix"]
    assert (same / "predictions.csv").read_bytes() == (run / "predictions.csv").read_bytes()
