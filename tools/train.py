"""Train RA-CNN with the alternating schedule, then evaluate.

    python tools/train.py --config FILE [--opts key.sub=value ...] [--work-dir DIR] [--resume auto|PATH]
                          [--eval-split test|val|none]
    torchrun --nproc_per_node=N tools/train.py --config FILE ...     (N processes, data.batch_size each)
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
import time

import torch

from raccnn.cli import run_main
from raccnn.config import HOW_COMPUTED, ConfigError, config_diff, fill_defaults, load_config, save_config
from raccnn.data.build import build_datasets
from raccnn.engine.checkpoint import CheckpointError, load_checkpoint
from raccnn.engine.distributed import barrier, init_distributed
from raccnn.engine.inference import run_evaluation
from raccnn.engine.phases import Alternating, Fusion
from raccnn.engine.preemption import Preempted, Preemption, ignore_signals
from raccnn.engine.trainer import Trainer
from raccnn.errors import DivergenceError
from raccnn.fileio import check_writable_dir, exclusive_lock

WORK_DIR_LOCK = ".train.lock"  # held by the training that writes in a work dir
BEST_FILES = (Alternating.best_file, Fusion.best_file)  # the checkpoints model selection keeps


def setup_logging(work_dir: str) -> None:
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    root = logging.getLogger("raccnn")
    root.setLevel(logging.INFO)
    root.handlers.clear()
    logging.raiseExceptions = False  # a full disk surfaces once, at the next checkpoint, not per log line
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(os.path.join(work_dir, "train.log"))):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def quiet_writer_thread(args) -> None:
    """TensorBoard writes its event file from a thread; when that write fails (disk full) the thread
    would print a traceback, and the trainer's next TensorBoard call raises the same error, which
    main() reports in one line."""
    if not issubclass(args.exc_type, OSError):
        threading.__excepthook__(args)


def check_same_run(saved: dict, cfg: dict, path: str) -> None:
    """A resumed run continues the same experiment: another config would mix two of them (and can
    change the phase plan the checkpoint's position refers to). Learning rates may change (the way
    on after a divergence), and so may train.force_lr and the keys of how the numbers are computed
    (``HOW_COMPUTED``). Keys added since the checkpoint was written count at their defaults."""
    ignore = ("work_dir", "train.force_lr", "data.verify_images", *HOW_COMPUTED)
    diff = [d for d in config_diff(fill_defaults(saved), cfg, ignore=ignore) if not d[0].endswith(".lr")]
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--work-dir", default=None, help="default: work_dirs/<config name>")
    p.add_argument("--resume", default=None, help="'auto' (last.pt in the work dir, if any) or the path of the work dir's last.pt; "
                   "a finished run trains nothing and keeps its files")
    p.add_argument("--eval-split", default=None, choices=["test", "val", "none"],
                   help="split evaluated after training (default: the config's eval.split)")
    args = p.parse_args(argv)

    threading.excepthook = quiet_writer_thread
    try:
        with Preemption() as preemption:  # SIGTERM, SIGINT, SIGUSR1: finish the step, save, exit 143 / 130
            # a divergence goes into train.log too; every other error is a line on stderr
            return run_main(lambda: train(args, preemption),
                            log=lambda exc: logging.getLogger("raccnn").error if isinstance(exc, DivergenceError) else None)
    except Preempted as exc:  # the lock and the process group are released on the way out
        ignore_signals()
        if not exc.reported:
            say(f"{exc} outside a training step; nothing is lost: continue with --resume auto")
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the handlers were in place
        say("stopped by SIGINT; nothing is lost: continue with --resume auto")
        return 130
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def say(line: str) -> None:
    """One line in the log (rank 0), or on stderr before the log is set up."""
    log = logging.getLogger("raccnn")
    if log.handlers:
        log.info(line)
    elif int(os.environ.get("RANK", "0")) == 0:
        print(line, file=sys.stderr)


def train(args, preemption: Preemption | None = None) -> int:
    t0 = time.time()
    opts = list(args.opts) + ([f"work_dir={args.work_dir}"] if args.work_dir else [])
    cfg = load_config(args.config, opts)
    world = init_distributed(cfg["device"])
    work_dir = cfg["work_dir"]
    with hold_work_dir(work_dir) if world.main else contextlib.nullcontext():
        return train_in(args, cfg, world, work_dir, t0, preemption)


@contextlib.contextmanager
def hold_work_dir(work_dir: str):
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


def train_in(args, cfg: dict, world, work_dir: str, t0: float, preemption: Preemption | None = None) -> int:
    last = os.path.join(work_dir, "last.pt")
    resume = args.resume
    if resume == "auto":
        resume = last if os.path.exists(last) else None
    elif resume is None and os.path.exists(last):
        raise CheckpointError(f"{work_dir} already holds a run ({last}); continue it with --resume auto, "
                              f"or choose another --work-dir")
    elif resume is not None:
        resume = os.path.expanduser(resume)
        check_resumable_name(resume)
    if resume and os.path.realpath(os.path.dirname(resume)) != os.path.realpath(work_dir):
        raise CheckpointError(f"--resume {resume} lies outside the work dir {work_dir}: a run continues in its "
                              f"own directory (its best checkpoints are there); copy that directory and "
                              f"resume inside it, or pass --work-dir {os.path.dirname(resume) or '.'}")
    if resume:
        saved = load_checkpoint(resume).get("config")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{resume}: no 'config' entry (not a raccnn training checkpoint?)")
        check_same_run(saved, cfg, resume)
    if world.main:  # rank 0 writes (FG-Synth, the image-check cache), then the others read
        datasets = build_datasets(cfg)
    barrier()
    if not world.main:
        datasets = build_datasets(cfg)
    data_seconds = time.time() - t0
    if world.main:
        setup_logging(work_dir)
    trainer = Trainer(cfg, datasets, work_dir)
    if resume:
        trainer.resume(resume)
    # a finished run (last.pt at the end of its schedule) trains nothing: its files stay as they are
    finished = bool(resume) and trainer.progress.phase_index >= len(trainer.plan)
    if world.main and not finished:
        save_config(cfg, os.path.join(work_dir, "config.yaml"))

    log = logging.getLogger("raccnn")
    log.info("work dir %s; %d train / %d val / %d test images, %d classes, device %s, %d process(es); data ready "
             "in %.1f s, %.0f MiB held in memory (data.cache)", work_dir, len(datasets["train"]), len(datasets["val"]),
             len(datasets["test"]), trainer.num_classes, trainer.device, world.size, data_seconds,
             sum(ds.cache.nbytes() for ds in datasets.values()) / 2**20)
    if finished:
        trainer.writer.close()
        log.info("%s is the end of a finished run: nothing to train", resume)
    else:
        trainer.run(preemption=preemption)
    log.info("training took %.1f s", time.time() - t0)

    split = args.eval_split or cfg["eval"]["split"]
    written = os.path.join(work_dir, "metrics.json" if split == "test" else f"metrics_{split}.json")
    if finished and split != "none" and os.path.exists(written):
        log.info("the %s metrics of this run are in %s (tools/eval.py --checkpoint %s evaluates again)", split,
                 written, os.path.join(work_dir, "best.pt"))
    elif split != "none":
        barrier()  # rank 0 has written best.pt
        metrics, table = run_evaluation(os.path.join(work_dir, "best.pt"), split, datasets=datasets)
        if world.main:
            print(table)
            log.info("metrics written to %s", metrics["path"])
    log.info("total %.1f s", time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
