"""FG-Synth on disk is never written over: a set of another setting or a folder of other files is
refused in one line, every writer (training, evaluation, make_synthetic) takes the same lock, an
unfinished set is never stamped, and an interrupted generation is finished without touching the
user's files."""
from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DEFAULT_CONFIG, load_tool
from conftest import TINY as TINY_RUN
from raccnn.config import load_config
from raccnn.data import CUBDataset, DatasetError, ensure_fgsynth, generate_fgsynth
from raccnn.data.synthetic import LOCK_FILE, STAMP
from raccnn.fileio import exclusive_lock

REPO = Path(__file__).resolve().parents[1]
TINY = dict(classes=3, images_per_class=6, size=96, seed=7)
# tools/make_synthetic.py with one fault armed by FAULT = "<kind>|<n>", rendering slowed down so that
# two generators started together overlap:
#   slow|s    each image takes s seconds longer to draw
#   kill|n    SIGKILL while drawing the n-th image (a generation dies half-way)
GENERATOR = r"""
import os, runpy, signal, sys, time
import raccnn.data.synthetic as S
kind, n = os.environ["FAULT"].split("|")
real, count = S.render_image, [0]
def render_image(*args, **kwargs):
    count[0] += 1
    if kind == "slow":
        time.sleep(float(n))
    if kind == "kill" and count[0] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
S.render_image = render_image
sys.argv = ["tools/make_synthetic.py"] + sys.argv[1:]
runpy.run_path("tools/make_synthetic.py", run_name="__main__")
"""


def make_synthetic_cmd(out, setting: dict, *extra) -> list[str]:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in setting.items()]
    return [sys.executable, "tools/make_synthetic.py", "--out", str(out), *args, "--no-check", *extra]


def generator(out, setting: dict, fault: str, **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-c", GENERATOR] + make_synthetic_cmd(out, setting)[2:]
    return subprocess.Popen(cmd, cwd=REPO, env=dict(__import__("os").environ, FAULT=fault), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (relative path -> sha256), and every folder (-> None)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in folder.rglob("*")}




def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The TINY set, generated alone into a fresh folder: what every recovered set must equal."""
    return snapshot(generate_fgsynth(tmp_path_factory.mktemp("reference"), **TINY))


def user_files(d: Path) -> None:
    """What a user keeps beside a set: notes and a folder of labels of their own."""
    (d / "notes.txt").write_text("crest labels checked by hand\n")
    (d / "labels").mkdir()
    (d / "labels" / "mine.txt").write_text("1 bands_lines\n")


def test_another_setting_is_refused_and_user_files_survive(tmp_path, reference):
    d = generate_fgsynth(tmp_path, **TINY)
    user_files(d)
    before = snapshot(d)
    with pytest.raises(DatasetError) as e:
        ensure_fgsynth(tmp_path, **dict(TINY, seed=8, classes=2))
    msg = str(e.value)
    assert "data.synth.classes: 3 there, 2 asked" in msg and "data.synth.seed: 7 there, 8 asked" in msg
    assert str(d) in msg and "remove" in msg and "data.root" in msg and "\n" not in msg
    with pytest.raises(DatasetError, match="data.synth.seed: 7 there, 8 asked"):
        generate_fgsynth(tmp_path, **dict(TINY, seed=8))
    assert snapshot(d) == before
    # the same setting is still served as it is
    assert ensure_fgsynth(tmp_path, **TINY) == d and snapshot(d) == before
    assert {k: v for k, v in before.items() if k in reference} == reference


def test_foreign_folder_is_refused_and_empty_folder_is_used(tmp_path, reference):
    d = tmp_path / "CUB_200_2011"
    d.mkdir()
    user_files(d)
    before = snapshot(d)
    with pytest.raises(DatasetError, match=r"is not an FG-Synth folder \(it holds labels, notes.txt\)"):
        ensure_fgsynth(tmp_path, **TINY)
    assert snapshot(d) == before
    shutil.rmtree(d / "labels")
    (d / "notes.txt").unlink()
    assert ensure_fgsynth(tmp_path, **TINY) == d and snapshot(d) == reference


def test_make_synthetic_waits_for_the_lock(tmp_path, reference):
    """A process that holds the data root's lock (a training writing FG-Synth there) makes
    make_synthetic wait: it writes nothing until the lock is released, then writes the set."""
    lines = []
    with exclusive_lock(tmp_path / LOCK_FILE):
        proc = generator(tmp_path, TINY, "slow|0")
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        deadline = time.time() + 120
        while not any("waiting for" in line for line in lines) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert proc.poll() is None, (proc.returncode, lines)
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]  # nothing written yet
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    reader.join(timeout=10)
    assert "wrote 18 images" in lines[-1], lines
    assert snapshot(tmp_path / "CUB_200_2011") == reference


def test_two_generators_at_once_never_leave_a_stamped_incomplete_set(tmp_path, reference):
    procs = [generator(tmp_path, TINY, "slow|0.1") for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [0, 0], results
    said = sorted(out.splitlines()[-1].split(" ")[0] for out, _ in results)
    assert said == [str(tmp_path / "CUB_200_2011"), "wrote"], results  # one wrote it, the other found it
    d = tmp_path / "CUB_200_2011"
    assert snapshot(d) == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, "CUB_200_2011"]
    assert len(CUBDataset(tmp_path, split="test")) == 9


def test_two_generators_of_different_settings_at_once(tmp_path, reference):
    """The second one finds the first one's set and refuses; the set on disk is whole."""
    procs = [generator(tmp_path, TINY, "slow|0.1"), generator(tmp_path, dict(TINY, seed=8), "slow|0.1")]
    results = [p.communicate(timeout=300) for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 2], results
    refused = next(err for p, (_, err) in zip(procs, results) if p.returncode == 2)
    assert "data.synth.seed: " in one_error_line(refused)
    d = tmp_path / "CUB_200_2011"
    have = snapshot(d)
    won = TINY if procs[0].returncode == 0 else dict(TINY, seed=8)
    assert have == snapshot(generate_fgsynth(tmp_path / "alone", **won))


def test_generation_killed_half_way_is_finished_on_the_next_run(tmp_path, reference):
    (tmp_path / "notes.txt").write_text("mine\n")  # a user's file in the data root
    proc = generator(tmp_path, TINY, "kill|10")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    d = tmp_path / "CUB_200_2011"
    assert not d.exists()  # nothing unfinished is ever in place
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and len(list(left[0].rglob("*.png"))) == 9
    (left[0] / "mine.txt").write_text("a file FG-Synth did not write\n")
    assert ensure_fgsynth(tmp_path, **TINY) == d and snapshot(d) == reference
    # the dead generation's own files are gone, the user's stay
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LOCK_FILE, "CUB_200_2011", "notes.txt", left[0].name])
    assert snapshot(left[0]) == {"mine.txt": hashlib.sha256(b"a file FG-Synth did not write\n").hexdigest()}
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_unstamped_set_in_place_is_finished_keeping_foreign_files(tmp_path, reference):
    """A set left unfinished in place (a generation killed there, of this or another setting):
    its own files are replaced, the user's files in it stay."""
    d = generate_fgsynth(tmp_path, **dict(TINY, seed=8))
    (d / STAMP).unlink()
    (d / "images.txt").unlink()
    for png in sorted(d.rglob("*.png"))[5:]:
        png.unlink()
    user_files(d)
    assert ensure_fgsynth(tmp_path, **TINY) == d
    have = snapshot(d)
    assert {k: v for k, v in have.items() if k in reference} == reference
    assert set(have) - set(reference) == {"notes.txt", "labels", "labels/mine.txt"}
    assert (d / "labels" / "mine.txt").read_text() == "1 bands_lines\n"
    assert len(CUBDataset(tmp_path, split="test")) == 9


def test_default_setting_is_drawn_as_before(tmp_path):
    """The set's content, pinned on a small setting of the default size: the images' pixels and every
    annotation file (PNG bytes depend on the zlib build)."""
    d = generate_fgsynth(tmp_path, classes=2, images_per_class=4)
    digest = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            data = np.asarray(Image.open(p)).tobytes() if p.suffix == ".png" else p.read_bytes()
            digest.update(p.relative_to(d).as_posix().encode() + b"\0" + data)
    assert digest.hexdigest() == "64e8c60a95c31d1b1719a99660a648cf3f4ffebe4a100a5933163f39ad1d2984"


# ----------------------------------------------------------------------------- command lines
@pytest.fixture
def other_set(tmp_path):
    """A data root holding the TINY run's set of another seed, with a user's files in it."""
    cfg = load_config(DEFAULT_CONFIG, TINY_RUN + [f"data.root={tmp_path}", "data.synth.seed=5"])
    from raccnn.data.build import prepare_data
    d = prepare_data(cfg)
    user_files(d)
    return tmp_path, snapshot(d)


def test_make_synthetic_cli_refuses_another_setting(other_set):
    root, before = other_set
    cmd = make_synthetic_cmd(root, dict(classes=3, images_per_class=16, size=96))
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "data.synth.seed: 5 there, 0 asked" in one_error_line(res.stderr)
    assert snapshot(root / "CUB_200_2011") == before


def test_train_cli_refuses_another_setting(other_set, tmp_path_factory, capsys):
    root, before = other_set
    work = tmp_path_factory.mktemp("work")
    code = load_tool("train").main(["--config", DEFAULT_CONFIG, "--work-dir", str(work),
                                    "--opts", *TINY_RUN, f"data.root={root}"])
    assert code == 2 and "data.synth.seed: 5 there, 0 asked" in one_error_line(capsys.readouterr().err)
    assert snapshot(root / "CUB_200_2011") == before and not (work / "last.pt").exists()


def test_eval_cli_refuses_a_checkpoint_of_another_setting(other_set, tmp_path_factory, capsys):
    """A checkpoint trained on seed 0 evaluated on a root that now holds seed 5: refused, not
    regenerated under whoever reads that set."""
    from raccnn.models import build_racnn

    root, before = other_set
    cfg = load_config(DEFAULT_CONFIG, TINY_RUN + [f"data.root={root}"])
    parts = ["body", "crest", "head", "tail", "wing"]
    model = build_racnn(dict(cfg, model=dict(cfg["model"], pretrained=False)), 3, parts)
    ckpt = tmp_path_factory.mktemp("run") / "best.pt"
    torch.save({"model": model.state_dict(), "config": cfg, "num_classes": 3, "part_names": parts}, ckpt)
    code = load_tool("eval").main(["--checkpoint", str(ckpt), "--device", "cpu"])
    assert code == 2 and "data.synth.seed: 5 there, 0 asked" in one_error_line(capsys.readouterr().err)
    assert snapshot(root / "CUB_200_2011") == before and not (ckpt.parent / "metrics.json").exists()
