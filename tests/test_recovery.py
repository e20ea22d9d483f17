"""What a crash or a failing file system leaves behind, through the command-line trainer.

The fault-injection test kills a training process with SIGKILL at several instants (it patches the
trainer inside the child so that the child kills itself at an exact point: mid-epoch in each kind
of phase, between two checkpoint writes, in the middle of a write), resumes with ``--resume auto``
each time, and requires the final weights and metrics to equal an uninterrupted run's exactly.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DEFAULT_CONFIG, TINY, call_main, load_tool

REPO = Path(__file__).resolve().parents[1]

# Run tools/train.py with one fault armed by KILL_AT = "<kind>|<target>|<n>":
#   step|<phase label>|n      SIGKILL after the n-th backward pass of that phase (mid-epoch)
#   saved|<file>|n            SIGKILL right after the n-th complete write of that checkpoint
#   writing|<file>|n          SIGKILL in the middle of the n-th write of that checkpoint
KILLER = r"""
import os, runpy, signal, sys
from raccnn.engine import step as S, trainer as T
from raccnn.fileio import atomic_open
kind, target, n = os.environ["KILL_AT"].split("|")
count = [0]
def reached():
    count[0] += 1
    return count[0] == int(n)
def die():
    os.kill(os.getpid(), signal.SIGKILL)
real_check, real_save = S.OptimizerStep.checked_norm, T.save_checkpoint
def checked_norm(self, loss, optimizer, terms, where, *args):
    norm = real_check(self, loss, optimizer, terms, where, *args)
    if kind == "step" and where.split(", epoch ")[0] == target and reached():  # "<phase label>, epoch e, ..."
        die()
    return norm
def save_checkpoint(path, state):
    mine = os.path.basename(path) == target
    if kind == "writing" and mine and reached():
        with atomic_open(path, "wb") as f:
            f.write(b"PK\x03\x04 the first bytes of a checkpoint")
            f.flush()
            die()
    real_save(path, state)
    if kind == "saved" and mine and reached():
        die()
S.OptimizerStep.checked_norm, T.save_checkpoint = checked_norm, save_checkpoint
sys.argv = ["tools/train.py"] + sys.argv[1:]
runpy.run_path("tools/train.py", run_name="__main__")
"""

# Each process resumes where the previous one died, so the counts are from that point on (the tiny
# run has two steps per epoch; its validation accuracy never improves after the first epoch of a
# phase, so a best file is written only then).
FAULTS = [
    "step|pretrain_cls|1",             # before any checkpoint exists: the next run starts afresh
    "step|init_apn|1",
    "saved|best_alternate.pt|1",       # between best_alternate.pt and last.pt
    "step|alternate_cls[round 1]|1",   # the first step of the phase's second epoch
    "writing|last.pt|2",               # in alternate_apn[round 1]; leaves .last.pt.<hex>.tmp behind
    "step|alternate_apn[round 2]|1",
    "step|fusion|1",
    "saved|best.pt|1",                 # between best.pt and last.pt in the first fusion epoch
]


def train_cmd(data_root, work_dir, *extra):
    return ["tools/train.py", "--config", DEFAULT_CONFIG, "--work-dir", str(work_dir), "--resume", "auto",
            "--opts", *TINY, f"data.root={data_root}", *extra]


def run(cmd, env=None, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, **kwargs)


def model_tensors(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_tensors(a, b, what):
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


def test_sigkill_at_every_kind_of_instant_then_resume_is_exact(data_root, tmp_path):
    ref = tmp_path / "uninterrupted"
    res = run([sys.executable, *train_cmd(data_root, ref)])
    assert res.returncode == 0, res.stderr

    work = tmp_path / "killed"
    for fault in FAULTS:
        res = run([sys.executable, "-c", KILLER, *train_cmd(data_root, work)[1:]], env={"KILL_AT": fault})
        assert res.returncode == -signal.SIGKILL, f"{fault} never fired:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        if fault.startswith("writing"):
            assert len(list(work.glob(".last.pt.*.tmp"))) == 1
    res = run([sys.executable, *train_cmd(data_root, work)])
    assert res.returncode == 0, res.stderr

    log = (work / "train.log").read_text()
    assert log.count("resumed from") == len(FAULTS) - 1  # the first kill came before any checkpoint
    assert "left by an interrupted checkpoint write" in log
    assert not list(work.glob(".*.tmp"))
    for name in ("best_alternate.pt", "best.pt", "last.pt"):
        assert_same_tensors(model_tensors(work / name), model_tensors(ref / name), name)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (ref, work)]
    for m in metrics:  # where the files are differs; what they hold does not
        m.pop("path"), m.pop("checkpoint"), m.pop("predictions")
    assert metrics[0] == metrics[1]
    assert (work / "predictions.csv").read_text() == (ref / "predictions.csv").read_text()


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_exit_2(data_root, tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse to grow any file past the limit (EFBIG), the same path
    through torch.save as a full disk (ENOSPC)."""
    work = tmp_path / "run"
    limit = 150_000  # the data, logs and events fit; the first checkpoint (about 300 kB) does not
    code = (f"import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            f"sys.argv = ['tools/train.py'] + sys.argv[1:]; runpy.run_path('tools/train.py', run_name='__main__')")
    warm = run([sys.executable, *train_cmd(data_root, tmp_path / "warm"), "train.pretrain_cls.epochs=0",
                "train.init_apn.epochs=0", "train.alternate.rounds=0", "model.fusion=log_probs"])  # no epoch at all
    assert warm.returncode == 0, warm.stderr[-2000:]  # the data is generated before the size limit applies
    res = run([sys.executable, "-c", code, *train_cmd(data_root, work)[1:]])
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()  # the first checkpoint, or the events file if it fills first
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(work) in lines[0], res.stderr
    assert lines[0].endswith("File too large") or lines[0].endswith(f"File too large (writing in {work})")
    assert not (work / "last.pt").exists() and not list(work.glob(".*.tmp"))


@pytest.mark.parametrize("where", ["file", "below_a_file"])
def test_a_work_dir_that_cannot_be_a_folder_is_one_line_and_exit_2(data_root, tmp_path, where, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    work = blocker if where == "file" else blocker / "run"
    code, _, err = call_main(load_tool("train").main, train_cmd(data_root, work)[1:], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {work}: ") and "work dir" in lines[0], err
    assert blocker.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_work_dir_is_one_line_and_exit_2(data_root, tmp_path):
    work = tmp_path / "ro"
    work.mkdir()
    work.chmod(0o555)
    try:
        res = run([sys.executable, *train_cmd(data_root, work)])
    finally:
        work.chmod(0o755)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"error: {work}: cannot write the work dir (Permission denied)"]


def test_eval_reports_an_unwritable_metrics_file_in_one_line(finished_run, tmp_path, capsys):
    work = tmp_path / "run"
    shutil.copytree(finished_run, work)
    (work / "metrics.json").unlink()
    (work / "metrics.json").mkdir()  # a folder where the file must go
    code, _, err = call_main(load_tool("eval").main, ["--checkpoint", str(work / "best.pt")], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {work / 'metrics.json'}: "), err


def test_a_second_training_in_a_busy_work_dir_is_refused_and_writes_nothing(data_root, tmp_path):
    """Two trainings in one work dir would overwrite each other's checkpoints: the second one stops
    before writing anything, naming the work dir."""
    from raccnn.fileio import exclusive_lock

    work = tmp_path / "busy"
    work.mkdir()
    with exclusive_lock(work / ".train.lock"):  # what a running tools/train.py holds
        res = run([sys.executable, *train_cmd(data_root, work)])
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"error: work_dir {work} is in use by another training (it holds {work}/.train.lock); wait for it to end, "
        f"or choose another --work-dir"]
    assert sorted(p.name for p in work.iterdir()) == [".train.lock"]


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    """A finished tiny run (one alternation round): every checkpoint, config.yaml and metrics.json."""
    work = tmp_path_factory.mktemp("finished") / "run"
    res = run([sys.executable, *train_cmd(data_root, work, "train.alternate.rounds=1")])
    assert res.returncode == 0, res.stderr[-2000:]
    return work


def written_files(work):
    """Every file the run wrote, with its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in work.iterdir()
            if p.suffix in (".pt", ".json", ".yaml")}


@pytest.mark.parametrize("best", ["best_alternate.pt", "best.pt"])
def test_resuming_from_a_best_checkpoint_is_refused_and_changes_nothing(finished_run, data_root, tmp_path, best,
                                                                        capsys):
    """A best file holds an earlier epoch: continuing from it would train on and overwrite last.pt and
    the best files with other weights."""
    work = tmp_path / "run"
    shutil.copytree(finished_run, work)
    before = written_files(work)
    cmd = train_cmd(data_root, work, "train.alternate.rounds=1")
    cmd[cmd.index("auto")] = str(work / best)
    code, _, err = call_main(load_tool("train").main, cmd[1:], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"error: --resume {work / best}: {best} is a best checkpoint, kept for evaluation (tools/eval.py "
        f"--checkpoint {work / best}); a run continues from its last.pt: --resume auto"]
    assert written_files(work) == before


def test_resume_auto_of_a_finished_run_trains_and_rewrites_nothing(finished_run, data_root, tmp_path):
    """Another learning rate is accepted on resume; a finished run trained nothing with it, so its
    config.yaml, checkpoints and metrics stay as they were."""
    work = tmp_path / "run"
    shutil.copytree(finished_run, work)
    before = written_files(work)
    res = run([sys.executable, *train_cmd(data_root, work, "train.alternate.rounds=1", "train.fusion.lr=0.001")])
    assert res.returncode == 0, res.stderr[-2000:]
    assert written_files(work) == before
    assert f"{work / 'last.pt'} is the end of a finished run: nothing to train" in res.stdout
    assert f"the test metrics of this run are in {work / 'metrics.json'}" in res.stdout
    # a split not evaluated yet is evaluated (a new file), the rest still untouched
    res = run([sys.executable, *train_cmd(data_root, work, "train.alternate.rounds=1"), "--eval-split", "val"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert (work / "metrics_val.json").exists()
    after = written_files(work)
    assert after.pop("metrics_val.json") and after == before
