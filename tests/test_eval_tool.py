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
