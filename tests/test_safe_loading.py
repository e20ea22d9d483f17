"""A checkpoint never runs code: every entry point that reads one refuses a file whose pickle calls a
function while it is read, in one line, exit code 2, before anything in it runs."""
import builtins
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from conftest import TINY, call_main, load_tool, make_trainer

from raccnn.engine.checkpoint import CheckpointError, UnsafeCheckpointError, load_checkpoint, save_checkpoint
from raccnn.engine.phases import Fusion

REPO = Path(__file__).resolve().parents[1]
CONFIG = "experiments/configs/fgsynth_default.yaml"
ROW = "proposer_apn"  # the folder of the grid's one row


class RunsCommand:
    """Unpickling this object runs ``os.system(command)`` (what a hostile checkpoint does)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class RunsPython:
    """Unpickling this object runs ``exec(source)``."""

    def __init__(self, source: str):
        self.source = source

    def __reduce__(self):
        return builtins.exec, (self.source,)


class Harmless:
    """Any class outside the allow-list is refused too, whatever it does."""


def poison(path: Path, payload) -> None:
    """Rewrite the raccnn checkpoint at ``path`` with all its real keys plus ``payload``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["extra"] = payload
    torch.save(state, path)


def touch(marker: Path) -> RunsCommand:
    return RunsCommand(f"touch {shlex.quote(str(marker))}")


def run(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def assert_refused(tool: str, argv: list, path: Path, marker: Path, capsys) -> None:
    """tools/<tool>.py with ``argv`` refuses the checkpoint at ``path`` in one line, exit code 2,
    and its code did not run."""
    code, _, err = call_main(load_tool(tool).main, [str(a) for a in argv], capsys)
    assert not marker.exists(), "the checkpoint's code ran"
    assert code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1, err[-2000:]
    assert f"refused {path}" in errors[0] and "posix.system" in errors[0], errors[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished grid of one tiny run (the grid runner trained it): (grid file, its output folder)."""
    tmp = tmp_path_factory.mktemp("grid")
    opts = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in TINY)}
    opts.update({"data.root": str(tmp / "data"), "train.alternate.rounds": 1})
    grid = {"config": CONFIG, "opts": opts, "seeds": [0], "blocks": [{"proposer": {"apn": {"model.proposer": "apn"}}}]}
    grid_file = tmp / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    out = tmp / "out"
    res = run("experiments/ablation.py", "--grid", grid_file, "--out", out)
    assert res.returncode == 0, res.stderr[-2000:]
    return grid_file, out


@pytest.fixture
def run_dir(finished, tmp_path):
    """A copy of the finished run's work dir."""
    _, out = finished
    copy = tmp_path / "run"
    shutil.copytree(out / ROW / "seed0", copy)
    return copy


def test_our_checkpoints_load_with_the_safe_loader(run_dir):
    for name in ("last.pt", "best.pt", "best_alternate.pt"):
        state = torch.load(run_dir / name, map_location="cpu", weights_only=True)
        assert {"model", "config", "progress", "rng", "classes"} <= set(state), name


@pytest.mark.parametrize("payload, named", [
    (lambda marker: touch(marker), "posix.system"),
    (lambda marker: RunsPython(f"open({str(marker)!r}, 'w').close()"), "reference to exec"),
    (lambda marker: Harmless(), "test_safe_loading.Harmless"),
])
def test_load_checkpoint_refuses_in_one_line_and_runs_nothing(tmp_path, payload, named):
    marker = tmp_path / "marker"
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"w": torch.ones(2)}, "extra": payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert not marker.exists()
    assert "\n" not in message and f"refused {path}" in message and named in message, message
    assert "weights_only" not in message  # the way out is never the unsafe loader
    assert isinstance(info.value, CheckpointError)  # every CLI turns it into one line and exit code 2


def test_the_unsafe_loader_cannot_be_asked_for(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"v": 1})
    with pytest.raises(TypeError):
        load_checkpoint(path, weights_only=False)


def test_the_environment_cannot_switch_the_safe_loader_off(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    path = tmp_path / "ckpt.pt"
    torch.save({"extra": touch(marker)}, path)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_eval(run_dir, capsys):
    marker = run_dir / "marker"
    poison(run_dir / "best.pt", touch(marker))
    metrics_before = (run_dir / "metrics.json").read_bytes()
    assert_refused("eval", ["--checkpoint", run_dir / "best.pt"], run_dir / "best.pt", marker, capsys)
    assert (run_dir / "metrics.json").read_bytes() == metrics_before


def test_predict(run_dir, tmp_path, capsys):
    marker = run_dir / "marker"
    poison(run_dir / "best.pt", touch(marker))
    image = tmp_path / "bird.png"
    Image.new("RGB", (64, 48), (120, 30, 200)).save(image)
    assert_refused("predict", ["--checkpoint", run_dir / "best.pt", image, "--out", tmp_path / "panels"],
                   run_dir / "best.pt", marker, capsys)
    assert not (tmp_path / "panels").exists()


def test_crop_panel(run_dir, capsys):
    marker = run_dir / "marker"
    poison(run_dir / "best.pt", touch(marker))
    assert_refused("crop_panel", ["--checkpoint", run_dir / "best.pt"], run_dir / "best.pt", marker, capsys)
    assert not list(run_dir.glob("crop_panel_*"))


def test_resume(run_dir, capsys):
    marker = run_dir / "marker"
    poison(run_dir / "last.pt", touch(marker))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.suffix in (".pt", ".json")}
    # the run's own config (the one it saved), so only the checkpoint stands in the way
    assert_refused("train", ["--config", run_dir / "config.yaml", "--work-dir", run_dir, "--resume", "auto"],
                   run_dir / "last.pt", marker, capsys)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.suffix in (".pt", ".json")} == before


def test_refit_fusion(run_dir, tmp_path, capsys):
    marker = run_dir / "marker"
    poison(run_dir / "best_alternate.pt", touch(marker))
    assert_refused("refit_fusion", ["--run", run_dir, "--fusion", "log_probs", "--work-dir", tmp_path / "refit"],
                   run_dir / "best_alternate.pt", marker, capsys)


def test_grid_reusing_a_finished_run(finished, tmp_path):
    grid_file, out = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    marker = tmp_path / "marker"
    poison(copy / ROW / "seed0" / "last.pt", touch(marker))
    res = run("experiments/ablation.py", "--grid", grid_file, "--out", copy)
    assert not marker.exists(), "the checkpoint's code ran"
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and f"refused {copy / ROW / 'seed0' / 'last.pt'}" in errors[0], res.stderr[-2000:]


def test_fusion_start_reads_best_alternate_safely(finished, data_root, tmp_path):
    work = tmp_path / "work"
    trainer = make_trainer(data_root, work, plan=None)
    trainer.plan = [Fusion(trainer.cfg)]
    _, out = finished
    shutil.copy(out / ROW / "seed0" / "best_alternate.pt", work / "best_alternate.pt")
    marker = tmp_path / "marker"
    state = load_checkpoint(work / "best_alternate.pt")
    state["model"] = trainer.model.state_dict()
    state["extra"] = touch(marker)
    torch.save(state, work / "best_alternate.pt")
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        trainer.run()
    assert not marker.exists()


@pytest.mark.parametrize("backbone", ["vgg11", "timm:resnet18"])
def test_pretrained_weights_are_read_safely_too(tmp_path, backbone):
    from raccnn.models import PretrainedWeightsError
    from raccnn.models.backbones import build_backbone

    marker = tmp_path / "marker"
    path = tmp_path / "weights.pth"
    torch.save({"features.0.weight": torch.zeros(1), "extra": touch(marker)}, path)
    with pytest.raises(PretrainedWeightsError) as info:
        build_backbone(backbone, pretrained=str(path))
    assert not marker.exists()
    message = str(info.value)
    assert "\n" not in message and f"refused {path}" in message and "posix.system" in message, message
