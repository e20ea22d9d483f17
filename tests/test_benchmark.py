"""The benchmarks (raccnn/bench, run by tools/benchmark.py) at a tiny size on the CPU: every case
measured, the table and the JSON agree."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

from raccnn.bench import main, parse_args, steps
from raccnn.config import load_config

from conftest import call_main
from test_recovery import run

TINY = ["model.width=4", "model.input_sizes=[32,32,32]", "model.apn.hidden=16", "data.resize=48", "data.crop=48"]


def test_benchmark_measures_every_case_and_the_loader(tmp_path):
    out = tmp_path / "bench.json"
    res = run([sys.executable, "tools/benchmark.py", "--config", "experiments/configs/fgsynth_default.yaml",
               "--opts", *TINY, "--classes", "5", "--batch", "2", "--steps", "2", "--warmup", "1",
               "--cases", "alternate_cls", "alternate_apn", "fusion", "eval", "plain_cls", "plain_apn",
               "--loader-images", "4", "--loader-workers", "0", "1", "--peak-tflops", "1", "--overhead", "--json", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    model_rows = [r for r in rows if not r["case"].startswith(("loader", "overhead"))]
    assert [r["case"] for r in model_rows] == ["alternate_cls", "alternate_apn", "fusion", "eval", "plain_cls",
                                                "plain_apn"]
    for r in model_rows:
        assert r["images_per_s"] > 0 and abs(r["images_per_s"] * r["ms_per_step"] / 1000 - 2) < 1e-6
        assert r["gflop_per_image"] > 0 and abs(r["mfu"] - r["tflops"]) < 1e-12  # peak 1 TFLOP/s
        # the crops are timed apart from the step, so at two steps of a tiny model noise can carry
        # their share past 1: only its sign is checked here
        assert r["crop_share"] >= 0
    by_case = {r["case"]: r for r in model_rows}
    # a training step counts forward and backward: more FLOPs than the forward alone
    assert by_case["alternate_cls"]["gflop_per_image"] > 2 * by_case["eval"]["gflop_per_image"]
    # every step that runs the model crops (fusion too: its forward), the plain steps do not
    assert all(by_case[c]["crop_share"] > 0 for c in ("alternate_cls", "alternate_apn", "fusion", "eval"))
    assert by_case["plain_cls"]["crop_share"] == by_case["plain_apn"]["crop_share"] == 0
    overhead = [r for r in rows if r["case"].startswith("overhead")]
    assert [r["case"] for r in overhead] == ["overhead_cls", "overhead_apn"]
    assert all(r["rounds"] == 2 and r["ratio"] > 0 and r["plain_ms"] > 0 and r["alternate_ms"] > 0 for r in overhead)
    assert "alternate_apn / plain_apn" in res.stdout
    loaders = [r for r in rows if r["case"] == "loader"]
    # both outputs side by side: normalised per image in the workers, uint8 converted per batch after them
    assert [(r["workers"], r["output"]) for r in loaders] == [(0, "float"), (0, "uint8"), (1, "float"), (1, "uint8")]
    assert all(r["images"] == 4 and r["images_per_s"] > 0 for r in loaders)
    assert all(r["speedup_vs_float"] > 0 for r in loaders if r["output"] == "uint8")
    # one process doing a worker's whole work, no conversion: what each worker adds
    per_worker = [r for r in rows if r["case"] == "loader_worker"]
    assert [r["output"] for r in per_worker] == ["float", "uint8"]
    assert all(r["images"] == 4 and r["batch"] == 2 and r["rounds"] == 1 for r in per_worker)
    assert all(abs(r["images_per_s"] * r["ms_per_image"] - 1000) < 1e-6 for r in per_worker)
    assert per_worker[1]["speedup_vs_float"] > 0 and "speedup_vs_float" not in per_worker[0]
    assert len([line for line in res.stdout.splitlines() if line.startswith("loader") and "x float)" in line]) == 3
    assert len([line for line in res.stdout.splitlines() if line.startswith("loader  per worker")]) == 2
    assert len([line for line in res.stdout.splitlines() if "img/s" in line]) == 6
    assert all(set(r["crop_ms"]) == ({"gather", "grid_sample"} if r["case"] in ("alternate_cls", "alternate_apn", "fusion", "eval")
                                      else set()) for r in model_rows)
    assert all(r["crop_impl"] == "gather" for r in model_rows)  # the default


def test_benchmark_ddp_rows_wrap_the_phase_steps(tmp_path):
    """--ddp false true: the phase steps twice, the second time through DistributedDataParallel over
    a one-process gloo group; eval is not a DDP step and is measured once."""
    out = tmp_path / "bench.json"
    res = run([sys.executable, "tools/benchmark.py", "--config", "experiments/configs/fgsynth_default.yaml",
               "--opts", *TINY, "--classes", "5", "--batch", "2", "--steps", "2", "--warmup", "1",
               "--cases", "alternate_cls", "alternate_apn", "eval", "--ddp", "false", "true",
               "--loader-workers", "--json", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["case"], r["ddp"]) for r in rows] == [("alternate_cls", False), ("alternate_apn", False),
                                                     ("eval", False), ("alternate_cls", True),
                                                     ("alternate_apn", True)]
    # the same step: the same FLOPs with and without the wrapper
    for case in ("alternate_cls", "alternate_apn"):
        plain, wrapped = (r["gflop_per_image"] for r in rows if r["case"] == case)
        assert wrapped == plain > 0


def test_benchmark_compiles_every_model_afresh(monkeypatch):
    """With ``--compile true`` each case's model is compiled from a clean Dynamo state, as in a
    training process: the second model of the same shapes compiles as many graphs as the first
    instead of reusing them (Dynamo's caches are per code object, shared by every model of the
    process, and its recompile limit with them; on an H100 the third batch size of one process
    ran eager while reported as compiled: 34.6 against 43.6 % MFU). The eager backend keeps it fast."""
    import torch

    graphs, built = [], []
    real_compile, real_build = torch.nn.Module.compile, steps.build_model

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def recording_build(*args, **kwargs):
        built.append(len(graphs))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: real_compile(self, backend=counting_backend))
    monkeypatch.setattr(steps, "build_model", recording_build)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=False):  # main() sets it; restored on exit
        rc = main(["--config", "experiments/configs/fgsynth_default.yaml", "--opts", *TINY, "--classes",
                             "5", "--batch", "2", "2", "--steps", "1", "--warmup", "0", "--compile", "true",
                             "--cases", "alternate_cls", "eval", "--loader-workers"])
        assert rc == 0 and torch._dynamo.config.fail_on_recompile_limit_hit  # a fall-back to eager stops it
    first, second = built[1] - built[0], len(graphs) - built[1]
    assert first > 0 and second == first, (built, len(graphs))


def test_gpu_script_passes_valid_arguments_and_configs(tmp_path):
    """tools/bench_gpu.sh, run with stand-ins for python and timeout that record their arguments:
    every benchmark call parses with the benchmarks' own parser and every config + --opts it names
    loads, so a GPU session is not lost to a typo; and the time limits of each part's commands add
    up to at most 9 minutes, so a part fits a 10-minute slot on the device."""
    calls, limits, bin_dir = tmp_path / "calls", tmp_path / "limits", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "timeout").write_text(f'#!/bin/sh\necho "$1" >> {limits}\nshift\nexec "$@"\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PYTHON": str(bin_dir / "python"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for part in ("steps", "options", "train", "crop"):
        limits.write_text("")
        res = subprocess.run(["bash", "tools/bench_gpu.sh", part, str(tmp_path / "out")], capture_output=True,
                             text=True, env=env)
        assert res.returncode == 0, res.stderr[-2000:]
        seconds = [int(v) for v in limits.read_text().split()]
        assert seconds and sum(seconds) <= 540, (part, seconds)
    res = subprocess.run(["bash", "tools/bench_gpu.sh", "stepz", str(tmp_path / "out")], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 2 and "unknown part stepz" in res.stderr
    lines = [shlex.split(line) for line in calls.read_text().splitlines()]
    bench = [argv[1:] for argv in lines if argv[0] == "tools/benchmark.py"]
    assert len(bench) == 9
    for argv in bench:
        args = parse_args(argv)
        assert args.benchmark == "steps"
        load_config(args.config, args.opts)
    trains = [argv[argv.index("tools/train.py") + 1:] for argv in lines if "tools/train.py" in argv]
    assert len(trains) == 1
    for argv in trains:
        opts = argv[argv.index("--opts") + 1:]
        load_config(argv[argv.index("--config") + 1], opts)


def test_local_attention_benchmark_times_both_computations(capsys):
    """The attention benchmark at tiny shapes: a row per shape with both times and the pick
    of ``auto`` (dense on the 4x4 map, unfold on the 12x12 one at d = 2, k = 3)."""
    code, out, err = call_main(main, ["attention", "--shapes", "2x8x4", "1x8x12", "--kernel-size", "3", "--repeats", "1"],
                               capsys)
    assert code == 0, err[-3000:]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line[:3].strip("| ").isdigit()]
    assert [(r[0], r[1], r[2]) for r in rows] == [("2x8x4", "18 vs 16", "dense"), ("1x8x12", "18 vs 144", "unfold")]
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows)
    code, _, err = call_main(main, ["attention", "--shapes", "2x8"], capsys)
    assert code == 2 and "expected BATCHxCHANNELSxSIDE" in err
    code, _, err = call_main(main, ["attention", "--shapes", "2x8x4", "--kernel-size", "4"], capsys)
    assert code == 2 and "kernel_size must be odd" in err


def test_benchmark_refuses_the_oracle_proposer_in_one_line(capsys):
    """The oracle zooms on annotated part boxes, which random tensors do not have."""
    code, out, err = call_main(main, ["--config", "experiments/configs/fgsynth_default.yaml", "--opts", *TINY,
                                      "model.proposer=oracle", "--batch", "2", "--steps", "1", "--loader-workers"], capsys)
    assert code == 2 and err.startswith("error: model.proposer: the oracle zooms on"), err
    assert out == ""


def test_benchmark_refuses_bad_numbers_in_one_usage_line(capsys):
    for args, words in ((["--batch", "0"], "--batch: must be at least 1, got 0"),
                        (["--steps", "0"], "--steps: must be at least 1, got 0"),
                        (["--warmup", "-1"], "--warmup: must be at least 0, got -1")):
        code, _, err = call_main(main, args, capsys)
        assert code == 2 and words in err


def test_one_command_line_runs_every_benchmark_and_steps_by_default():
    """tools/benchmark.py and ``python -m raccnn.bench`` share one parser: a sub-command per
    benchmark, ``steps`` when the arguments start with an option, one usage line for an unknown name."""
    assert [parse_args([name]).benchmark for name in ("steps", "crop", "pool", "ddp", "attention", "images")] == [
        "steps", "crop", "pool", "ddp", "attention", "images"]
    assert parse_args([]).benchmark == "steps"
    default = parse_args(["--batch", "2", "4", "--overhead"])
    assert default.benchmark == "steps" and default.batch == [2, 4] and default.overhead
    implicit, explicit = (vars(parse_args(argv)) for argv in (["--steps", "3"], ["steps", "--steps", "3"]))
    assert implicit.pop("parser") is not None and explicit.pop("parser") is not None
    assert implicit == explicit and implicit["steps"] == 3
    bad = run([sys.executable, "-m", "raccnn.bench", "stepz"])
    assert bad.returncode == 2 and "invalid choice: 'stepz'" in bad.stderr and "Traceback" not in bad.stderr


def test_crop_benchmark_times_the_batched_crop_against_the_loop(capsys):
    code, out, err = call_main(main, ["crop", "--sizes", "32", "16", "--batches", "1", "3", "--repeats", "2",
                                      "--threads", "1"], capsys)
    assert code == 0, err[-3000:]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line[:3].strip("| ").isdigit()]
    assert [r[0] for r in rows] == ["1", "3"]
    for _, fast, slow, speedup in rows:
        assert float(fast) > 0 and float(slow) > 0 and speedup.endswith("x")
    assert "crop 32->16, forward+backward, median of 2" in out
    code, _, err = call_main(main, ["crop", "--batches", "0"], capsys)
    assert code == 2 and "--batches: must be at least 1, got 0" in err


def test_image_check_benchmark_times_both_modes_cold_then_cached(tmp_path, capsys):
    """On a small stand-in with one truncated JPEG: both modes, the first check reads every file and
    caches, the second is answered from the cache; the unreadable file is counted each time."""
    from raccnn.data.standin import write_cub_standin
    from raccnn.data.verify import CACHE_NAME

    d = write_cub_standin(tmp_path, classes=2, images_per_class=3, size=(40, 30))
    victim = sorted((d / "images").rglob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    code, out, err = call_main(main, ["images", "--root", str(tmp_path), "--workers", "1"], capsys)
    assert code == 0, err[-3000:]
    lines = out.splitlines()
    assert lines[0].startswith("6 images, ") and "generated" not in out  # an existing stand-in is kept
    timed = [line.split() for line in lines[1:]]
    assert [(t[0], t[1]) for t in timed] == [("header", "cold"), ("header", "cached"), ("full", "cold"), ("full", "cached")]
    assert all(float(t[2]) >= 0 and t[3] == "s" and float(t[4]) > 0 and t[-2:] == ["(1", "unreadable)"] for t in timed)
    assert json.loads((d / CACHE_NAME).read_text())["mode"] == "full"
