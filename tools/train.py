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
import time

from raccnn.cli import run_main
from raccnn.config import load_config, save_config
from raccnn.data.build import build_datasets
from raccnn.engine.distributed import barrier, init_distributed, leave_process_group
from raccnn.engine.inference import metrics_name, run_evaluation, selection_rule
from raccnn.engine.preemption import Preempted, Preemption, ignore_signals
from raccnn.engine.run import check_same_run, hold_work_dir, read_run_config, resume_path, setup_logging
from raccnn.engine.trainer import Trainer
from raccnn.errors import DivergenceError

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
        leave_process_group()


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


def train_in(args, cfg: dict, world, work_dir: str, t0: float, preemption: Preemption | None = None) -> int:
    resume = resume_path(args.resume, work_dir)
    if resume:
        check_same_run(read_run_config(resume), cfg, resume)
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
    log.info("model selection: %s", selection_rule(cfg))
    if finished:
        trainer.writer.close()
        log.info("%s is the end of a finished run: nothing to train", resume)
    else:
        trainer.run(preemption=preemption)
    log.info("training took %.1f s", time.time() - t0)

    split = args.eval_split or cfg["eval"]["split"]
    written = os.path.join(work_dir, metrics_name("best.pt", split))
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
