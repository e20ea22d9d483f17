"""SIGTERM, SIGINT and SIGUSR1 stop a training after the current step, with last.pt written there.

The training processes receive real signals: from the test (``os.kill`` on the subprocess), or sent
by the process to itself at an exact point (a patched trainer, as in ``test_recovery.py``): after
the n-th step of a phase (inside an epoch, or its last batch), during a validation, during the
final evaluation. Each stopped run exits 143 (130 for SIGINT) with one line saying where it
stopped and no traceback; ``--resume auto`` then continues, and the chain of stopped and resumed
runs must end with the weights, history, logged epoch numbers and metrics of an uninterrupted run,
exactly. Under torchrun the signal reaches one rank only: both must stop at the same step.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import yaml

from conftest import TINY
from test_distributed import generate_data, torchrun
from test_recovery import REPO, assert_same_tensors, model_tensors, run, train_cmd

# Run tools/train.py with STOP_AT = "<SIGNAL>|<where>|<n>[|<rank>]": the process sends itself SIGNAL
#   <phase label>|n    after the n-th backward pass of that phase (counted from this process's start)
#   validate|n         in the n-th validation
#   evaluate|n         in the evaluation after training
# only on the given torchrun rank, if one is given.
STOPPER = r"""
import os, runpy, signal, sys
from raccnn.engine import inference, step as S, validation as V
name, where, n, *rank = os.environ["STOP_AT"].split("|")
mine = not rank or os.environ.get("RANK", "0") == rank[0]
count = [0]
def stop_here(here):
    if here == where and mine:
        count[0] += 1
        if count[0] == int(n):
            os.kill(os.getpid(), getattr(signal, name))
real_check, real_validate, real_evaluation = S.OptimizerStep.checked_norm, V.Validation.__call__, inference.run_evaluation
def checked_norm(self, loss, optimizer, terms, where, *args):
    norm = real_check(self, loss, optimizer, terms, where, *args)
    stop_here(where.split(", epoch ")[0])  # where: "<phase label>, epoch e, step s"
    return norm
def validate(self, model):
    stop_here("validate")
    return real_validate(self, model)
def run_evaluation(*args, **kwargs):
    stop_here("evaluate")
    return real_evaluation(*args, **kwargs)
S.OptimizerStep.checked_norm, V.Validation.__call__, inference.run_evaluation = checked_norm, validate, run_evaluation
sys.argv = ["tools/train.py"] + sys.argv[1:]
code = runpy.run_path("tools/train.py", run_name="train_cli")["main"]()
# a process group still alive once main has returned would be torn down with the interpreter
gloo = [t for t in os.listdir("/proc/self/task") if "gloo" in open(f"/proc/self/task/{t}/comm").read()]
if gloo:
    print(f"{len(gloo)} gloo threads still run after main returned", file=sys.stderr)
sys.exit(code)
"""
SMALL_BATCHES = ["data.batch_size=4"]  # four steps per epoch, so a stop can come after batch 1, 2, 3 or 4
EXIT = {"SIGTERM": 143, "SIGUSR1": 143, "SIGINT": 130}


def epoch_lines(log: str) -> list[str]:
    """The lines logged per epoch (train loss and terms, validation), without times and speeds."""
    pattern = re.compile(r" epoch \d+: train loss|active rank hinges| boxes: ")
    keep = [line[9:] for line in log.splitlines() if pattern.search(line)]
    return [re.sub(r"\(\d+ img/s\)", "", line) for line in keep]


def history(work_dir):
    return torch.load(work_dir / "last.pt", map_location="cpu", weights_only=True)["progress"]["history"]


def assert_same_run(work, ref):
    for name in ("best_alternate.pt", "best.pt", "last.pt"):
        assert_same_tensors(model_tensors(work / name), model_tensors(ref / name), name)
    assert history(work) == history(ref)
    assert epoch_lines((work / "train.log").read_text()) == epoch_lines((ref / "train.log").read_text())
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (ref, work)]
    for m in metrics:  # where the files are differs; what they hold does not
        m.pop("path"), m.pop("checkpoint"), m.pop("predictions")
    assert metrics[0] == metrics[1]
    assert (work / "predictions.csv").read_text() == (ref / "predictions.csv").read_text()


def stopped_lines(work_dir) -> list[str]:
    return [line for line in (work_dir / "train.log").read_text().splitlines() if " stopped by SIG" in line]


# (STOP_AT, the line logged), each run resuming where the one before stopped (the tiny run's
# alternation phases all last two epochs): mid-epoch after batch 1, 2, 3 and the last (4); in a
# validation; in the fusion phase's first epoch (whose start loads best_alternate.pt: not again on resume)
FAULTS = [
    ("SIGTERM|alternate_cls[round 1]|1", "in alternate_cls[round 1], epoch 1 after batch 1 of 4"),
    ("SIGINT|alternate_cls[round 1]|5", "in alternate_cls[round 1], epoch 2 after batch 2 of 4"),
    ("SIGUSR1|alternate_apn[round 1]|3", "in alternate_apn[round 1], epoch 1 after batch 3 of 4"),
    ("SIGTERM|alternate_apn[round 1]|5", "in alternate_apn[round 1], epoch 2 after batch 4 of 4"),
    ("SIGTERM|validate|2", "after alternate_cls[round 2], epoch 1"),
    ("SIGINT|fusion|2", "in fusion, epoch 1 after batch 2 of 4"),
]


def test_signals_stop_after_the_step_and_resume_ends_as_the_uninterrupted_run(data_root, tmp_path):
    ref = tmp_path / "uninterrupted"
    res = run([sys.executable, *train_cmd(data_root, ref, *SMALL_BATCHES)])
    assert res.returncode == 0, res.stderr[-2000:]

    work = tmp_path / "stopped"
    # a SIGTERM from outside, once the first phase has ended (somewhere in init_apn or round 0)
    proc = subprocess.Popen([sys.executable, *train_cmd(data_root, work, *SMALL_BATCHES)], cwd=REPO, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = work / "train.log"
    while proc.poll() is None and not (log.exists() and "pretrain_cls epoch 1:" in log.read_text()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err[-2000:]
    assert len(stopped_lines(work)) == 1 and "stopped by SIGTERM" in out

    for n, (fault, where) in enumerate(FAULTS, start=2):
        res = run([sys.executable, "-c", STOPPER, *train_cmd(data_root, work, *SMALL_BATCHES)[1:]],
                  env={"STOP_AT": fault})
        name = fault.split("|")[0]
        assert res.returncode == EXIT[name], f"{fault}: exit {res.returncode}\n{res.stdout[-2000:]}{res.stderr[-2000:]}"
        assert "Traceback" not in res.stderr, res.stderr[-3000:]
        lines = stopped_lines(work)
        assert len(lines) == n and f"stopped by {name} {where} (step " in lines[-1], lines[-1]
        assert lines[-1].endswith("last.pt holds this point: continue with --resume auto")
        # what a stop adds to last.pt loads with torch's safe loader
        progress = torch.load(work / "last.pt", map_location="cpu", weights_only=True)["progress"]
        assert progress["batch"] == (int(where.split("batch ")[1][0]) if "batch" in where else 0)
        assert int(re.search(r"\(step (\d+)\)", lines[-1]).group(1)) == progress["step"]

    # stopped during the final evaluation: nothing to save, one line on the log, 130
    res = run([sys.executable, "-c", STOPPER, *train_cmd(data_root, work, *SMALL_BATCHES)[1:]],
              env={"STOP_AT": "SIGINT|evaluate|1"})
    assert res.returncode == 130 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert (work / "train.log").read_text().splitlines()[-1].endswith(
        "stopped by SIGINT outside a training step; nothing is lost: continue with --resume auto")
    assert not (work / "metrics.json").exists()

    res = run([sys.executable, *train_cmd(data_root, work, *SMALL_BATCHES)])
    assert res.returncode == 0, res.stderr[-2000:]
    assert (work / "train.log").read_text().count("resumed from") == len(FAULTS) + 2
    assert_same_run(work, ref)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")
def test_under_torchrun_a_signal_to_one_rank_stops_both_at_the_same_step(data_root, tmp_path):
    generate_data(data_root, tmp_path)
    small = ["data.batch_size=2", "train.alternate.rounds=1"]  # per process: four steps per epoch
    ref = tmp_path / "ddp"
    res = torchrun(*train_cmd(data_root, ref, *small))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    start = {}  # the global step at which each phase begins
    for h in history(ref):
        start.setdefault(h["phase"], h["step"] - 4 * h["epoch"])
    work = tmp_path / "ddp_stopped"
    # (STOP_AT, batch): the signal reaches rank 1 only, then rank 0 only
    for fault, batch in (("SIGTERM|init_apn|2|1", 2), ("SIGINT|alternate_apn[round 1]|3|0", 3)):
        script = work.parent / "stopper.py"
        script.write_text(STOPPER)
        res = torchrun(str(script), *train_cmd(data_root, work, *small)[1:], env={"STOP_AT": fault})
        # torchrun reports both processes' exit codes (in its own traceback); none of them has one
        codes = re.findall(r"^\s*exitcode\s+: (-?\d+)", res.stderr, re.M)
        assert codes == [str(EXIT[fault.split("|")[0]])] * 2, res.stdout[-3000:] + res.stderr[-3000:]
        assert not re.search(r'File ".*(raccnn|train\.py|stopper\.py)', res.stderr), res.stderr[-3000:]
        assert "gloo threads still run" not in res.stderr, res.stderr[-3000:]
        progress = torch.load(work / "last.pt", map_location="cpu", weights_only=True)["progress"]
        step = start[fault.split("|")[1]] + batch
        assert (progress["step"], progress["batch"]) == (step, batch)
        assert stopped_lines(work)[-1].count(f"(step {step})") == 1, res.stdout[-3000:]
    # the resumed run to its end, through the same script with a signal that never comes
    res = torchrun(str(script), *train_cmd(data_root, work, *small)[1:], env={"STOP_AT": "SIGINT|nowhere|1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "gloo threads still run" not in res.stderr, res.stderr[-3000:]
    assert "weights identical on all 2 ranks" in res.stdout
    assert_same_run(work, ref)


def test_the_runner_passes_a_signal_to_its_trainings_and_a_rerun_resumes(tmp_path):
    opts = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in TINY)}
    opts.update({"data.root": str(tmp_path / "data"), "train.pretrain_cls.epochs": 15, "train.alternate.rounds": 0})
    grid = {"config": "experiments/configs/fgsynth_default.yaml", "opts": opts, "seeds": [0, 1],
            "blocks": [{"attention": {"none": {"model.attention.type": "none"}}}]}
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    out = tmp_path / "out"
    cmd = [sys.executable, "experiments/ablation.py", "--grid", str(grid_file), "--out", str(out), "--jobs", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    runner = subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lasts = [out / "attention_none" / f"seed{s}" / "last.pt" for s in (0, 1)]
    while runner.poll() is None and not all(p.exists() for p in lasts):  # both trainings are in their epochs
        time.sleep(0.05)
    runner.send_signal(signal.SIGTERM)
    stdout, stderr = runner.communicate(timeout=120)
    assert runner.returncode == 143, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stderr and "error" not in stderr, stderr
    # the trainings share one data root: the one that waits for the other's FG-Synth says so on stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("waiting for ")]
    assert lines == [
        "stopped by SIGTERM: 2 training(s) stopped, each keeping its last.pt; run the same command again to continue"]
    for last in lasts:
        log = (last.parent / "train.log").read_text()
        assert log.count("stopped by SIGTERM") == 1 and not (last.parent / "metrics.json").exists()
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    for last in lasts:
        assert "resumed from" in (last.parent / "train.log").read_text()
        assert (last.parent / "metrics.json").exists()


def test_handlers_are_restored_and_a_signal_outside_the_loop_raises_at_once():
    from raccnn.engine.distributed import World
    from raccnn.engine.preemption import Preempted, Preemption

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    with Preemption() as stop:
        with stop.deferred():
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGINT)  # the first signal decides
        assert stop.requested(World(), torch.device("cpu")) and stop.signum == signal.SIGUSR1
    assert {sig: signal.getsignal(sig) for sig in before} == before
    with pytest.raises(Preempted) as info, Preemption():
        os.kill(os.getpid(), signal.SIGINT)
    assert info.value.exit_code == 130 and str(info.value) == "stopped by SIGINT"
