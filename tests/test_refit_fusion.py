"""tools/refit_fusion.py: the fusion phase rerun on a finished alternation with another head."""
import sys

import pytest
import torch
from conftest import make_trainer

from raccnn.engine.checkpoint import CheckpointError, load_checkpoint

sys.path.insert(0, "tools")
from refit_fusion import refit  # noqa: E402


def test_refit_swaps_the_fusion_heads_and_keeps_the_scales(data_root, tmp_path):
    run = tmp_path / "run"
    make_trainer(data_root, run, extra=["train.alternate.rounds=1"]).run()  # model.fusion: features
    out = tmp_path / "refit"
    metrics = refit(str(run), "log_probs", str(out))
    assert (out / "metrics.json").exists() and metrics["num_images"] == 24
    source = load_checkpoint(run / "best_alternate.pt", weights_only=False)["model"]
    best = load_checkpoint(out / "best.pt", weights_only=False)
    assert best["config"]["model"]["fusion"] == "log_probs" and best["phase"] == "fusion"
    assert {k for k in best["model"] if k.startswith("fusion.")} == {"fusion.12.raw", "fusion.123.raw"}
    for k, v in source.items():  # scales and APNs exactly as the alternation left them
        if not k.startswith("fusion."):
            assert torch.equal(best["model"][k], v), k
    assert "per-scale weights" in (out / "train.log").read_text()
    with pytest.raises(CheckpointError, match="already holds a run"):
        refit(str(run), "features", str(out))
    with pytest.raises(CheckpointError, match="best_alternate.pt not found"):
        refit(str(tmp_path / "nothing"), "features", str(tmp_path / "x"))
