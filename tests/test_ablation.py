"""The ablation runner on a 2-row grid of tiny runs."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import TINY, call_main, load_script


REPO = Path(__file__).resolve().parents[1]


def load_ablation():
    """experiments/ablation.py as a module (it is a script, not part of the package)."""
    return load_script("experiments/ablation.py")


def test_two_row_grid_writes_both_files_and_rerun_skips(tmp_path, capsys):
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
    # every run's own numbers, as its metrics.json has them
    runs = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["row"], r["seed"]) for r in runs] == [(r["row"], "0") for r in rows]
    for r, folder in zip(runs, ("attention_none_proposer_apn", "attention_se_3_proposer_apn")):
        saved = json.loads((out / folder / "seed0" / "metrics.json").read_text())
        assert float(r["acc_scale2"]) == saved["acc_scale2"] and float(r["part_hit_scale2"]) == saved["part_hit_scale2"]
    # the paired differences drawn beside the table, which links the picture
    assert "](forest.png)" in md
    with Image.open(out / "forest.png") as picture:
        assert picture.format == "PNG" and min(picture.size) > 100
    # training's final evaluation leaves the per-image predictions beside metrics.json
    assert (out / "attention_none_proposer_apn" / "seed0" / "predictions.csv").is_file()
    assert list((out / "hparams").rglob("events.out.tfevents*"))

    main = load_ablation().main
    code, again, err = call_main(main, cmd[2:], capsys)
    assert code == 0, err[-2000:]
    assert "tools/train.py" not in again  # finished rows are skipped
    finished = (out / "results.md").read_text()
    code, _, _ = call_main(main, cmd[2:] + ["--report"], capsys)
    assert code == 0 and (out / "results.md").read_text() == finished  # nothing unfinished to list

    # --report with a row not yet run: the finished rows as before, the new one unfinished, nothing trained
    grid["blocks"][0]["attention"]["se@4"] = {"model.attention.type": "se", "model.attention.stages": [4]}
    grid_file.write_text(yaml.safe_dump(grid))
    code, report, err = call_main(main, cmd[2:] + ["--report"], capsys)
    assert code == 0, err[-2000:]
    assert "tools/train.py" not in report and not (out / "attention_se_4_proposer_apn").exists()
    assert (out / "attention_se_3_proposer_apn").exists()  # (the folder name of a row)
    reported = {r["row"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert reported["attention=se@4,proposer=apn"]["unfinished"] == "seed 0"
    assert reported["attention=se@3,proposer=apn"]["unfinished"] == ""
    assert reported["attention=se@3,proposer=apn"]["acc_scale2"] == rows[1]["acc_scale2"]
    md = (out / "results.md").read_text()
    assert "| unfinished runs |" in md and "| attention=se@4,proposer=apn | n/a |" in md and "seed 0 |" in md
    del grid["blocks"][0]["attention"]["se@4"]

    # its runs.csv gives the same table to a folder without the runs, and trains nothing
    grid_file.write_text(yaml.safe_dump(grid))
    code, again, err = call_main(main, cmd[2:-1] + [str(tmp_path / "elsewhere"), "--runs", str(out / "runs.csv")],
                                 capsys)
    assert code == 0 and "tools/train.py" not in again, err[-2000:]
    assert not (tmp_path / "elsewhere" / "attention_none_proposer_apn").exists()
    for r, k in zip(csv.DictReader(open(tmp_path / "elsewhere" / "results.csv")), rows):
        for column in ("acc_scale2", "acc_fused123_std", "acc_scale2_diff", "params", "images_per_s"):
            assert r[column] == k[column], column
    # given with its folder, the folder's numbers must be the runs.csv's
    edited = list(csv.DictReader(open(out / "runs.csv")))
    edited[0]["acc_scale2"] = repr(float(edited[0]["acc_scale2"]) + 0.5)
    with open(tmp_path / "edited.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(edited[0]))
        writer.writeheader()
        writer.writerows(edited)
    code, _, err = call_main(main, cmd[2:] + ["--runs", str(tmp_path / "edited.csv")], capsys)
    assert code == 1 and "metrics.json differs from --runs in acc_scale2" in err

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
    code, reused, err = call_main(main, cmd[2:-1] + [str(moved)], capsys)
    assert code == 0, err[-2000:]
    assert "tools/train.py" not in reused
    # but a run of another config in that folder is refused, naming the differing key
    grid["opts"]["train.alternate.cls.lr_decay"] = 0.25  # the default config has 0.5
    grid_file.write_text(yaml.safe_dump(grid))
    _, other, err = call_main(main, cmd[2:-1] + [str(moved)], capsys)
    assert "train.alternate.cls.lr_decay" in other + err
    assert "tools/train.py" not in other


def test_bad_grid_row_fails_before_training(tmp_path, capsys):
    main = load_ablation().main
    code, _, err = call_main(main, ["--grid", "experiments/grids/quick.yaml", "--jobs", "0", "--dry-run"], capsys)
    assert code == 2 and "--jobs must be at least 1" in err
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({
        "config": "experiments/configs/fgsynth_default.yaml",
        "blocks": [{"attention": {"bad": {"model.attention.type": "sex"}}}],
    }))
    code, _, err = call_main(main, ["--grid", str(grid_file), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "model.attention.type" in err and "se" in err
    assert not (tmp_path / "out").exists()


def test_a_failed_run_is_a_failed_row_and_rows_need_not_have_three_scales(tmp_path, capsys):
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
    code, _, err = call_main(load_ablation().main, ["--grid", str(grid_file), "--out", str(out)], capsys)
    assert code == 1 and "the run in" in err and "failed (exit 2)" in err
    rows = {r["row"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["weights=none"]["failed"] == "" and rows["weights=missing"]["failed"] == "seed 0"
    assert rows["weights=none"]["acc_scale2"] != "" and rows["weights=none"]["acc_fused12"] != ""
    assert "acc_scale3" not in rows["weights=none"]
    md = (out / "results.md").read_text()
    assert "| scale 1 | scale 2 | fused (all) |" in md and "scale 3" not in md
    assert "| weights=missing | n/a | n/a | n/a | n/a | - | - | n/a | n/a | n/a | seed 0 |" in md
    assert "](forest.png)" in md and (out / "forest.png").stat().st_size > 0  # a row without runs: an empty line


GRID = {"config": "experiments/configs/fgsynth_default.yaml", "seeds": [0], "blocks": [{"run": {"default": {}}}]}


def test_runs_from_a_runs_csv_make_the_table_and_train_nothing(tmp_path, capsys):
    """--runs: the numbers of runs whose folders are gone, tabled as if they had run here."""
    grid = {"config": "experiments/configs/fgsynth_default.yaml", "seeds": [0, 1], "baseline": "run=a",
            "blocks": [{"run": {"a": {}, "b": {"train.alternate.rounds": 1}}}]}
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    header = "row,seed,acc_scale1,acc_scale2,acc_scale3,acc_fused123,part_hit_scale2"
    lines = [header,
             "run=a,0,0.4,0.8,0.7,0.85,0.9",
             "run=a,1,0.5,0.9,0.8,0.95,1.0",
             "run=b,0,0.4,0.6,0.7,0.75,0.5",
             "run=b,1,0.5,0.8,0.8,0.85,0.6",
             "run=c,0,0.1,0.1,0.1,0.1,0.1",  # a row this grid does not have
             "run=a,7,0.1,0.1,0.1,0.1,0.1"]  # nor this seed
    runs = tmp_path / "runs.csv"
    runs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code, printed, err = call_main(load_ablation().main, ["--grid", str(grid_file), "--out", str(out),
                                                          "--runs", str(runs)], capsys)
    assert code == 0, err
    assert "tools/train.py" not in printed and "2 run(s) of rows or seeds this grid does not have" in printed
    assert not (out / "run_a").exists()
    table = {r["row"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert float(table["run=a"]["acc_scale2"]) == pytest.approx(0.85)
    assert float(table["run=b"]["acc_scale2"]) == pytest.approx(0.7)
    # paired by seed: b - a = -0.2 and -0.1
    assert float(table["run=b"]["acc_scale2_diff"]) == pytest.approx(-0.15)
    assert float(table["run=b"]["part_hit_scale2_diff"]) == pytest.approx(-0.4)
    assert table["run=b"]["failed"] == "" and "params" not in table["run=a"]  # no class count, no cost
    md = (out / "results.md").read_text()
    assert "| run=b | 45.0 ± 7.1" in md and "| n/a | n/a | n/a | - |" in md
    # the numbers come back as read: a run.csv written from them holds the same lines
    assert (out / "runs.csv").read_text().splitlines()[1:5] == [line + ",," for line in lines[1:5]]


@pytest.mark.parametrize("text, message", [
    ("row,acc_scale2\nrun=a,0.5\n", "runs.csv: no column seed"),
    ("row,seed,acc_scale1,acc_scale2,acc_scale3,acc_fused123,part_hit_scale2\nrun=a,0,0.4,0.8,0.7,0.85,0.9\n"
     "run=a,0,0.4,high,0.7,0.85,0.9\n", "runs.csv, line 3: acc_scale2 'high' is not a number"),
    ("row,seed,acc_scale1,acc_scale2,acc_scale3,acc_fused123,part_hit_scale2\nrun=a,x,0.4,0.8,0.7,0.85,0.9\n",
     "runs.csv, line 2: seed 'x' is not an integer"),
    ("row,seed,acc_scale1,acc_scale2,acc_scale3,acc_fused123\nrun=a,0,0.4,0.8,0.7,0.85\n",
     "runs.csv, line 2: row 'run=a' needs part_hit_scale2, which is empty or missing"),
    ("row,seed,acc_scale1,acc_scale2,acc_scale3,acc_fused123,part_hit_scale2\nrun=a,0,0.4,0.8,0.7,0.85,0.9\n"
     "run=a,0,0.4,0.7,0.7,0.85,0.9\n", "runs.csv, line 3: run=a seed 0 has other numbers in"),
    (b"\x89PNG\r\n\x1a\n\xff\xfe", "runs.csv: not a readable runs.csv"),
])
def test_a_broken_runs_csv_is_one_error_naming_file_and_line(tmp_path, capsys, text, message):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({**GRID, "blocks": [{"run": {"a": {}}}]}))
    (tmp_path / "runs.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
    code, _, err = call_main(load_ablation().main, ["--grid", str(grid_file), "--out", str(tmp_path / "out"),
                                                    "--runs", str(tmp_path / "runs.csv")], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, message", [
    ({"blocks": {"run": {"default": {}}}}, "blocks: expected a non-empty list of blocks"),
    ({"blocks": []}, "blocks: expected a non-empty list of blocks"),
    ({"blocks": [{"run": []}]}, "blocks[0].run: expected a non-empty mapping label -> config overrides, got list []"),
    ({"blocks": [{"run": {"a": [1]}}]}, "blocks[0].run.a: expected a mapping of config keys to values, got list [1]"),
    ({"blocks": [{"run": {True: {}}}]}, "blocks[0].run: label True is read by YAML as bool; quote it"),
    ({"blocks": [{"a": {"x": {"train.alternate.rounds": 1}}, "b": {"y": {"train.alternate.rounds": 2}}}]},
     "blocks[0], row a=x,b=y: axes 'a' and 'b' both set train.alternate.rounds"),
    ({"blocks": [{"run": {"x": {"model.width": 4}}}, {"run": {"x": {"model.width": 8}}}]},
     "row run=x is given twice with different overrides"),
    ({"seeds": 5}, "seeds: expected a non-empty list of integers, e.g. [0, 1, 2], got int 5"),
    ({"seeds": "12"}, "seeds: expected a non-empty list of integers, e.g. [0, 1, 2], got str '12'"),
    ({"seeds": []}, "seeds: expected a non-empty list of integers"),
    ({"seeds": [0, 0]}, "seeds[1]: seed 0 is listed twice"),
    ({"seeds": [1.5]}, "seeds[0]: expected an integer, got float 1.5"),
    ({"seeds": [True]}, "seeds[0]: expected an integer, got bool True"),
    ({"opts": [1]}, "opts: expected a mapping of config keys to values, got list [1]"),
    ({"opts": {"seed": 3}}, "opts: seed is set for each run by the grid (seeds); remove it"),
    ({"baseline": 1}, "baseline: expected a row name"),
    ({"config": "nope.yaml"}, "config: no such file, got str 'nope.yaml'"),
    ({"blocks": [{"run": {"bad": {"model.attention.type": "sex"}}}]},
     "row run=bad: model.attention.type: 'sex' is not one of"),
])
def test_a_wrong_grid_is_one_line_naming_file_and_key_and_exit_2(tmp_path, capsys, change, message):
    ablation = load_ablation()
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({**GRID, **change}))
    for extra in (["--dry-run"], []):  # the dry run checks what a run checks, before any run starts
        assert ablation.main(["--grid", str(grid_file), "--out", str(tmp_path / "out"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.splitlines() == [err.strip()] and err.startswith(f"error: {grid_file}: "), err
        assert message in err, err
        assert not (tmp_path / "out").exists()


def test_a_label_written_twice_in_a_grid_is_refused(tmp_path, capsys):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("config: experiments/configs/fgsynth_default.yaml\nblocks:\n  - attention:\n"
                         "      none: {model.attention.type: none}\n"
                         "      none: {model.attention.type: se, model.attention.stages: [4]}\n")
    code, _, err = call_main(load_ablation().main, ["--grid", str(grid_file), "--dry-run"], capsys)
    assert code == 2 and err == f"error: {grid_file}: duplicate key 'none' at lines 4 and 5 " \
                                f"(only the last would count); keep one\n"


@pytest.mark.parametrize("grid", sorted(p.name for p in (REPO / "experiments" / "grids").glob("*.yaml")))
def test_every_shipped_grid_passes_the_check_a_run_makes(grid, capsys):
    """Each file under experiments/grids/ is a valid grid whose every row resolves to a valid config
    (the distractor grid's rows too, with data.synth.distractor set for all of them)."""
    ablation = load_ablation()
    assert ablation.main(["--grid", f"experiments/grids/{grid}", "--dry-run"]) == 0, capsys.readouterr().err
    if grid == "learned_attention_distractor.yaml":
        plain = ablation.load_grid("experiments/grids/learned_attention.yaml")
        variant = ablation.load_grid(f"experiments/grids/{grid}")
        assert variant["blocks"] == plain["blocks"] and variant["opts"] == {"data.synth.distractor": True}
