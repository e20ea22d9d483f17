"""tools/refit_fusion.py: the fusion phase rerun on a finished alternation with another head."""
import pytest
import torch
from conftest import DEFAULT_CONFIG, TINY, load_tool, make_trainer
from PIL import Image

from raccnn.config import load_config
from raccnn.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from raccnn.errors import ConfigError
from raccnn.fileio import exclusive_lock
from raccnn.engine.refit import refit
from raccnn.models import build_racnn



@pytest.mark.parametrize("source, target, keys", [
    ("features", "log_probs", {"fusion.12.raw", "fusion.123.raw"}),
    ("log_probs", "features", {"fusion.12.weight", "fusion.12.bias", "fusion.123.weight", "fusion.123.bias"}),
])
def test_refit_swaps_the_fusion_heads_and_keeps_the_scales(data_root, tmp_path, source, target, keys):
    run = tmp_path / "run"
    make_trainer(data_root, run, extra=["train.alternate.rounds=1", f"model.fusion={source}"]).run()
    out = tmp_path / "refit"
    metrics = refit(str(run), target, str(out))
    assert (out / "metrics.json").exists() and metrics["num_images"] == 24
    source_model = load_checkpoint(run / "best_alternate.pt")["model"]
    best = load_checkpoint(out / "best.pt")
    assert best["config"]["model"]["fusion"] == target and best["phase"] == "fusion"
    assert {k for k in best["model"] if k.startswith("fusion.")} == keys
    for k, v in source_model.items():  # scales and APNs exactly as the alternation left them
        if not k.startswith("fusion."):
            assert torch.equal(best["model"][k], v), k
    log = (out / "train.log").read_text()
    assert "val mean scale accuracy -1" not in log  # the alternation's score is carried over
    with pytest.raises(CheckpointError, match="already holds a run"):
        refit(str(run), "features", str(out))
    busy = tmp_path / "busy"
    busy.mkdir()
    with exclusive_lock(busy / ".train.lock"):  # a training (or another refit) writing there
        with pytest.raises(ConfigError, match="is in use by another training"):
            refit(str(run), "features", str(busy))
    with pytest.raises(CheckpointError, match="best_alternate.pt not found"):
        refit(str(tmp_path / "nothing"), "features", str(tmp_path / "x"))
    # tools/train.py's full plan refuses to continue the one-phase refit
    with pytest.raises(CheckpointError, match="another plan of phases"):
        make_trainer(data_root, out, extra=[f"model.fusion={target}", "train.alternate.rounds=1"]).resume(str(out / "last.pt"))


def fake_run(root, extra=()):
    """``root/run/best_alternate.pt``: a tiny untrained model on FG-Synth's 3 classes, as the
    alternation leaves it (no data is read until the refit opens the dataset)."""
    cfg = load_config(DEFAULT_CONFIG, TINY + [f"data.root={root / 'fgsynth'}", *extra])
    (root / "run").mkdir()
    save_checkpoint(root / "run" / "best_alternate.pt", {
        "model": build_racnn(cfg, num_classes=3).state_dict(), "config": cfg, "num_classes": 3,
        "classes": ["alpha", "beta", "gamma"], "phase": "alternate", "progress": {"best": {}}})
    return root / "run"


def test_opts_that_change_the_kept_scales_are_refused_before_anything_is_written(tmp_path, capsys):
    run = fake_run(tmp_path)
    out = tmp_path / "refit"
    assert load_tool("refit_fusion").main(["--run", str(run), "--fusion", "log_probs", "--work-dir", str(out), "--opts", "model.width=32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: option model.width: model.width is 4 in {run / 'best_alternate.pt'} and shapes the "
                   "weights it holds, so it cannot become 32")
    assert not out.exists() and not (tmp_path / "fgsynth").exists()


def test_a_dataset_with_other_class_names_is_refused_before_anything_is_written(tmp_path, capsys):
    run = fake_run(tmp_path)
    for c in ("cat", "dog", "owl"):
        (tmp_path / "folder" / c).mkdir(parents=True)
        for j in range(4):
            Image.new("RGB", (96, 96), (60 * j, 0, 0)).save(tmp_path / "folder" / c / f"{j}.png")
    out = tmp_path / "refit"
    opts = ["data.dataset=folder", f"data.root={tmp_path / 'folder'}", "data.hit_parts=[]", "data.val_fraction=0.5"]
    assert load_tool("refit_fusion").main(["--run", str(run), "--fusion", "log_probs", "--work-dir", str(out), "--opts", *opts]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {run / 'best_alternate.pt'}: the class names of the dataset in "
                                              f"{tmp_path / 'folder'} differ from those it was trained on")
    assert not out.exists()
