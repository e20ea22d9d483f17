"""What several test files share: the tiny model and schedule, and a trainer built from them."""
import os

# `make test` runs two test processes on a 2-core machine: one compute thread each (and in every
# command a test starts, which inherits it), not two each fighting for the same cores. Set before
# torch is imported; an OMP_NUM_THREADS already in the environment wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import importlib.util
from pathlib import Path

import pytest

from raccnn.config import load_config
from raccnn.data.build import build_datasets
from raccnn.engine.trainer import Trainer

DEFAULT_CONFIG = "experiments/configs/fgsynth_default.yaml"
# a vgg_small of width 4 seeing 32-pixel inputs at every scale, cut from 96-pixel images
TINY_MODEL = ["data.resize=96", "data.crop=96", "model.width=4", "model.input_sizes=[32,32,32]",
              "model.apn.hidden=16", "model.apn.pool_size=2"]
# FG-Synth with 3 classes of 16 images (8 train, of which 2 validate, and 8 test per class)
TINY_DATA = ["data.synth.classes=3", "data.synth.images_per_class=16", "data.synth.size=96", "data.val_fraction=0.25",
             "data.synth.check=false"]  # a plumbing set: FG-Synth's certificate does not hold at 96 -> 32 px
# every phase, two alternation rounds, a few steps each (seconds on the CPU)
TINY = TINY_DATA + TINY_MODEL + [
    "data.batch_size=8", "train.pretrain_cls.epochs=1", "train.init_apn.epochs=1", "train.alternate.rounds=2",
    "train.alternate.cls.min_epochs=1", "train.alternate.cls.max_epochs=2", "train.alternate.cls.patience=1",
    "train.alternate.apn.max_epochs=2", "train.alternate.apn.lr=0.01",
    "train.fusion.epochs=1", "train.log_interval=1", "deterministic=true",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fgsynth"))


def make_trainer(data_root, work_dir, extra=(), plan=None):
    cfg = load_config(DEFAULT_CONFIG, TINY + [f"data.root={data_root}", f"work_dir={work_dir}", *extra])
    return Trainer(cfg, build_datasets(cfg), str(work_dir), plan=plan)


def load_script(path: str):
    """A script of the repository (``tools/<name>.py``, ``experiments/<name>.py``) as a module, to
    call its functions in this process (a script is not a package module: loaded by its path,
    nothing added to sys.path)."""
    full = Path(__file__).resolve().parents[1] / path
    spec = importlib.util.spec_from_file_location(f"{full.stem}_cli", full)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_tool(name: str):
    """tools/<name>.py as a module, to call its main() in this process."""
    return load_script(f"tools/{name}.py")


def call_main(main, argv, capsys):
    """``main(argv)`` of a command in this process, as its process would end: (exit code, stdout,
    stderr), argparse's exit read as a code like any other. For what a command refuses before any
    work; one test per command runs it as a script."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
