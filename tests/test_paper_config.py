"""The paper's config (VGG-19, 448 -> 224 -> 224, 200 classes) end to end on a CUB-shaped stand-in:
every phase for one step, evaluation and metrics, on the CPU. What it leaves untested on that path
is only the ImageNet weights and the photos."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from raccnn.data import CUBDataset
from raccnn.data.standin import CUB_PARTS, write_cub_standin
from test_recovery import run

SMOKE = ["model.pretrained=false", "device=cpu", "data.batch_size=2", "data.eval_batch_size=2", "data.num_workers=0",
         "data.val_fraction=0.5", "data.max_images=2", "train.pretrain_cls.epochs=1", "train.init_apn.epochs=1",
         "train.alternate.rounds=1", "train.alternate.cls.min_epochs=1", "train.alternate.cls.max_epochs=1",
         "train.alternate.apn.min_epochs=1", "train.alternate.apn.max_epochs=1", "train.fusion.epochs=1"]


def test_the_standin_has_cub_layout_and_counts(tmp_path):
    d = write_cub_standin(tmp_path, classes=4, images_per_class=3)
    ds = CUBDataset(tmp_path, split="trainval")
    test = CUBDataset(tmp_path, split="test")
    assert d.name == "CUB_200_2011" and ds.part_names == list(CUB_PARTS) and len(CUB_PARTS) == 15
    assert len(ds) == 8 and len(test) == 4 and ds.num_classes == 4
    w, h = [int(v) for v in ds[0]["image"].shape[-1:-3:-1]]
    assert 425 <= w <= 500 and 318 <= h <= 375


def test_paper_config_runs_every_phase_on_a_cub_shaped_standin(tmp_path):
    write_cub_standin(tmp_path / "data", images_per_class=3)  # 200 classes, 400 train / 200 test JPEGs
    work = tmp_path / "run"
    res = run([sys.executable, "tools/train.py", "--config", "experiments/configs/cub200_vgg19.yaml", "--work-dir",
               str(work), "--opts", f"data.root={tmp_path / 'data'}", *SMOKE])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for phase in ("pretrain_cls", "init_apn", "alternate_cls[round 1]", "alternate_apn[round 1]", "fusion"):
        assert f"== phase {phase}:" in res.stdout
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["num_images"] == 2
    ckpt = torch.load(work / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["config"]["model"]["input_sizes"] == [448, 224, 224] and ckpt["config"]["model"]["backbone"] == "vgg19"
    assert ckpt["num_classes"] == 200 and ckpt["model"]["scales.0.classifier.weight"].shape == (200, 512)
    assert sum(v.numel() for k, v in ckpt["model"].items() if k.startswith("scales.0.backbone")) == 20_024_384
