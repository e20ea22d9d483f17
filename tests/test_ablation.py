"""The ablation runner on a 2-row grid of tiny runs."""
import csv
import shutil
import subprocess
import sys

import yaml
from PIL import Image

from conftest import TINY


def test_two_row_grid_writes_both_files_and_rerun_skips(tmp_path):
    opts = dict(o.split("=", 1) for o in TINY)
    opts = {k: yaml.safe_load(v) for k, v in opts.items()}
    opts.update({"data.root": str(tmp_path / "data"), "train.alternate.rounds": 1})
    grid = {
        "config": "experiments/configs/fgsynth_default.yaml",
        "opts": opts,
        "seeds": [0],
        "blocks": [{"attention": {"none": {"model.attention.type": "none"},
                                  "se@3": {"model.attention.type": "se", "model.attention.stages": [3]}},
                    "proposer": {"apn": {"model.proposer": "apn"}}}],
    }
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    out = tmp_path / "out"
    cmd = [sys.executable, "experiments/ablation.py", "--grid", str(grid_file), "--out", str(out)]
    # two runners on one folder at once, one of them two runs at a time: each run is trained once
    runners = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for c in (cmd + ["--jobs", "2"], cmd)]
    outputs = [r.communicate() for r in runners]
    assert [r.returncode for r in runners] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert sum(o.count("tools/train.py") for o, _ in outputs) == 2

    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["row"] for r in rows] == ["attention=none,proposer=apn", "attention=se@3,proposer=apn"]
    for column in ("acc_scale1", "acc_scale2", "acc_scale3", "acc_fused123", "part_hit_scale2",
                   "acc_scale1_std", "params", "gflops", "images_per_s"):
        assert all(r[column] != "" for r in rows), column
    assert float(rows[1]["params"]) > float(rows[0]["params"])  # the SE blocks add parameters
    assert float(rows[0]["images_per_s"]) > 0 and float(rows[0]["gflops"]) > 0
    md = (out / "results.md").read_text()
    assert "| attention=se@3,proposer=apn |" in md and "part hit s2" in md
    # the paired differences drawn beside the table, which links the picture
    assert "](forest.png)" in md
    with Image.open(out / "forest.png") as picture:
        assert picture.format == "PNG" and min(picture.size) > 100
    # training's final evaluation leaves the per-image predictions beside metrics.json
    assert (out / "attention_none_proposer_apn" / "seed0" / "predictions.csv").is_file()
    assert list((out / "hparams").rglob("events.out.tfevents*"))

    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "tools/train.py" not in again.stdout  # finished rows are skipped
    finished = (out / "results.md").read_text()
    report = subprocess.run(cmd + ["--report"], capture_output=True, text=True)
    assert report.returncode == 0 and (out / "results.md").read_text() == finished  # nothing unfinished to list

    # --report with a row not yet run: the finished rows as before, the new one unfinished, nothing trained
    grid["blocks"][0]["attention"]["se@4"] = {"model.attention.type": "se", "model.attention.stages": [4]}
    grid_file.write_text(yaml.safe_dump(grid))
    report = subprocess.run(cmd + ["--report"], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "tools/train.py" not in report.stdout and not (out / "attention_se_4_proposer_apn").exists()
    assert (out / "attention_se_3_proposer_apn").exists()  # (the folder name of a row)
    reported = {r["row"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert reported["attention=se@4,proposer=apn"]["unfinished"] == "seed 0"
    assert reported["attention=se@3,proposer=apn"]["unfinished"] == ""
    assert reported["attention=se@3,proposer=apn"]["acc_scale2"] == rows[1]["acc_scale2"]
    md = (out / "results.md").read_text()
    assert "| unfinished runs |" in md and "| attention=se@4,proposer=apn | n/a |" in md and "seed 0 |" in md
    del grid["blocks"][0]["attention"]["se@4"]

    # a finished run copied into another grid's folder is the same run: reused, not retrained
    moved = tmp_path / "moved"
    shutil.copytree(out / "attention_none_proposer_apn", moved / "attention_none_proposer_apn")
    # as is one computed another way (raccnn.config.HOW_COMPUTED): here with the crop's former default
    saved_cfg = moved / "attention_none_proposer_apn" / "seed0" / "config.yaml"
    saved = yaml.safe_load(saved_cfg.read_text())
    assert saved["model"]["crop"]["impl"] == "auto"
    saved["model"]["crop"]["impl"] = "gather"
    saved_cfg.write_text(yaml.safe_dump(saved))
    grid["blocks"][0]["attention"].pop("se@3")
    grid_file.write_text(yaml.safe_dump(grid))
    reused = subprocess.run(cmd[:-1] + [str(moved)], capture_output=True, text=True)
    assert reused.returncode == 0, reused.stderr[-2000:]
    assert "tools/train.py" not in reused.stdout
    # but a run of another config in that folder is refused, naming the differing key
    grid["opts"]["train.alternate.cls.lr_decay"] = 0.25  # the default config has 0.5
    grid_file.write_text(yaml.safe_dump(grid))
    other = subprocess.run(cmd[:-1] + [str(moved)], capture_output=True, text=True)
    assert "train.alternate.cls.lr_decay" in other.stdout + other.stderr
    assert "tools/train.py" not in other.stdout


def test_bad_grid_row_fails_before_training(tmp_path):
    res = subprocess.run([sys.executable, "experiments/ablation.py", "--grid", "experiments/grids/quick.yaml",
                          "--jobs", "0", "--dry-run"], capture_output=True, text=True)
    assert res.returncode == 2 and "--jobs must be at least 1" in res.stderr
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({
        "config": "experiments/configs/fgsynth_default.yaml",
        "blocks": [{"attention": {"bad": {"model.attention.type": "sex"}}}],
    }))
    res = subprocess.run([sys.executable, "experiments/ablation.py", "--grid", str(grid_file),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert res.returncode == 2 and "model.attention.type" in res.stderr and "se" in res.stderr
    assert not (tmp_path / "out").exists()


def test_a_failed_run_is_a_failed_row_and_rows_need_not_have_three_scales(tmp_path):
    opts = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in TINY)}
    opts.update({"data.root": str(tmp_path / "data"), "train.alternate.rounds": 1,
                 "model.n_scales": 2, "model.input_sizes": [32, 32]})
    grid = {
        "config": "experiments/configs/fgsynth_default.yaml",
        "opts": opts,
        "seeds": [0],
        # vgg_small has no ImageNet weights: the config is valid, the run stops with an error
        "blocks": [{"weights": {"none": {}, "missing": {"model.pretrained": True}}}],
    }
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "experiments/ablation.py", "--grid", str(grid_file), "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "the run in" in res.stderr and "failed (exit 2)" in res.stderr
    rows = {r["row"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["weights=none"]["failed"] == "" and rows["weights=missing"]["failed"] == "seed 0"
    assert rows["weights=none"]["acc_scale2"] != "" and rows["weights=none"]["acc_fused12"] != ""
    assert "acc_scale3" not in rows["weights=none"]
    md = (out / "results.md").read_text()
    assert "| scale 1 | scale 2 | fused (all) |" in md and "scale 3" not in md
    assert "| weights=missing | n/a | n/a | n/a | n/a | - | - | n/a | n/a | n/a | seed 0 |" in md
    assert "](forest.png)" in md and (out / "forest.png").stat().st_size > 0  # a row without runs: an empty line
