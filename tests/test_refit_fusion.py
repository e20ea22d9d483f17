"""tools/refit_fusion.py: the fusion phase rerun on a finished alternation with another head."""
import sys

import pytest
import torch
from conftest import make_trainer

from raccnn.engine.checkpoint import CheckpointError, load_checkpoint
from raccnn.errors import ConfigError
from raccnn.fileio import exclusive_lock

sys.path.insert(0, "tools")
from refit_fusion import refit  # noqa: E402


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
