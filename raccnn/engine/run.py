"""A run's work dir: its lock, its log, which checkpoint continues it, whether a config is the
same experiment as the one it holds, and the epochs it keeps for studies of model selection
(``keep_epoch``, ``train.keep_epochs``).

One process writes a work dir at a time (``hold_work_dir``); a run continues only from its own
``last.pt`` (``resume_path``); and ``run_differences`` is the one rule for "is this the same
experiment?", used by a resume (``check_same_run``, which lets learning rates change) and by the
grid runner's reuse of a finished run (which does not).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Callable, Iterator

from ..config import HOW_COMPUTED, config_diff, fill_defaults
from ..errors import CheckpointError, ConfigError
from ..fileio import check_writable_dir, exclusive_lock
from .checkpoint import load_checkpoint, save_checkpoint
from .phases import Alternating, Fusion
from .visualize import crops_tag

WORK_DIR_LOCK = ".train.lock"  # held by the training that writes in a work dir
BEST_FILES = (Alternating.best_file, Fusion.best_file)  # the checkpoints model selection keeps
# where a run lives and how its numbers are computed are not what it is
NOT_THE_EXPERIMENT = ("name", "work_dir", "train.force_lr", "data.verify_images", *HOW_COMPUTED)
KEPT_EPOCH_KEYS = ("model", "progress", "phase", "config", "num_classes", "classes", "part_names")


def keep_epoch(cfg: dict, best_file: str, work_dir: str, state: Callable[[], dict], main: bool) -> None:
    """``train.keep_epochs``: on the main process, an epoch that competes for best_alternate.pt is also
    kept, weights only (``KEPT_EPOCH_KEYS`` of the trainer's ``state()``), as
    epochs/<epochs run so far, 3 digits>_<phase>_epoch<k>.pt: the names sort in training order
    (read by experiments/selection.py)."""
    if not (cfg["train"]["keep_epochs"] and main and best_file == Alternating.best_file):
        return
    full = state()
    p = full["progress"]
    name = f"{p['epochs_run']:03d}_{crops_tag(full['phase']).split('/', 1)[1]}_epoch{p['epoch']}.pt"
    save_checkpoint(os.path.join(work_dir, "epochs", name), {k: full[k] for k in KEPT_EPOCH_KEYS})


def run_differences(saved: dict, cfg: dict, lr_may_change: bool = False) -> list[tuple]:
    """(key, saved value, new value) for every key in which ``cfg`` is another experiment than the
    run ``saved`` describes. Keys added since ``saved`` was written count at their defaults; with
    ``lr_may_change`` the learning rates may differ (the way on after a divergence)."""
    diff = config_diff(fill_defaults(saved), cfg, ignore=NOT_THE_EXPERIMENT)
    return [d for d in diff if not (lr_may_change and d[0].endswith(".lr"))]


def check_same_run(saved: dict, cfg: dict, path: str) -> None:
    """A resumed run continues the same experiment: another config would mix two of them (and can
    change the phase plan the checkpoint's position refers to)."""
    diff = run_differences(saved, cfg, lr_may_change=True)
    if diff:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff[:6])
        raise CheckpointError(f"{path} belongs to a run with another config ({shown}); choose another "
                              f"--work-dir, or remove {os.path.dirname(path)} to start over")


def check_resumable_name(path: str) -> None:
    """A run continues only from its ``last.pt``: a best checkpoint holds an earlier epoch, and
    continuing from it would overwrite ``last.pt`` and the best files with another run's weights."""
    name = os.path.basename(path)
    if name == "last.pt":
        return
    if name in BEST_FILES:
        raise CheckpointError(f"--resume {path}: {name} is a best checkpoint, kept for evaluation "
                              f"(tools/eval.py --checkpoint {path}); a run continues from its last.pt: --resume auto")
    raise CheckpointError(f"--resume {path}: a run continues only from the last.pt of its work dir "
                          f"(--resume auto)")


def resume_path(resume: str | None, work_dir: str) -> str | None:
    """The checkpoint a training in ``work_dir`` continues from, given ``--resume`` (None, ``auto``
    or a path), or None for a fresh start; refuses what would mix or lose runs."""
    last = os.path.join(work_dir, "last.pt")
    if resume == "auto":
        return last if os.path.exists(last) else None
    if resume is None:
        if os.path.exists(last):
            raise CheckpointError(f"{work_dir} already holds a run ({last}); continue it with --resume auto, "
                                  f"or choose another --work-dir")
        return None
    resume = os.path.expanduser(resume)
    check_resumable_name(resume)
    if os.path.realpath(os.path.dirname(resume)) != os.path.realpath(work_dir):
        raise CheckpointError(f"--resume {resume} lies outside the work dir {work_dir}: a run continues in its "
                              f"own directory (its best checkpoints are there); copy that directory and "
                              f"resume inside it, or pass --work-dir {os.path.dirname(resume) or '.'}")
    return resume


def read_run_config(path: str) -> dict:
    """The config a training checkpoint was written with."""
    saved = load_checkpoint(path).get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: no 'config' entry (not a raccnn training checkpoint?)")
    return saved


@contextlib.contextmanager
def hold_work_dir(work_dir: str) -> Iterator[None]:
    """Create the work dir, prove it writable and hold its lock for the block: one process writes a
    work dir at a time (a second would overwrite the first one's checkpoints), the other stops."""
    check_writable_dir(work_dir, "work dir")
    path = os.path.join(work_dir, WORK_DIR_LOCK)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(path, wait=False))
        except BlockingIOError:
            raise ConfigError(f"work_dir {work_dir} is in use by another training (it holds {path}); wait for it "
                              f"to end, or choose another --work-dir") from None
        yield


def setup_logging(work_dir: str) -> None:
    """The ``raccnn`` logger to the console and ``train.log`` in the work dir; a thread's failed
    TensorBoard write (a full disk) stays quiet, as the trainer's next call reports it in one line."""
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    root = logging.getLogger("raccnn")
    root.setLevel(logging.INFO)
    root.handlers.clear()
    logging.raiseExceptions = False  # a full disk surfaces once, at the next checkpoint, not per log line
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(os.path.join(work_dir, "train.log"))):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    threading.excepthook = _quiet_writer_thread


def _quiet_writer_thread(args) -> None:
    if not issubclass(args.exc_type, OSError):
        threading.__excepthook__(args)
