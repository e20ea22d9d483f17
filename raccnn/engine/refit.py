"""The fusion phase alone, again, on a finished alternation, with the fusion head of one's choice
(``tools/refit_fusion.py``): two fusion heads compared on the very same scales, paired by run.

The run's ``best_alternate.pt`` is only read; the new work dir gets that checkpoint with the chosen
fusion heads in place of the old ones (scales and APNs unchanged), the fusion phase's ``best.pt``
and ``last.pt``, ``train.log`` and the test ``metrics.json``. A work dir that already holds a run
is refused, and so are changes that reshape the kept scales and APNs or a dataset whose class
names differ from the run's, before anything is written.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping

from ..config import fill_defaults, parse_cli_opts, save_config
from ..data.build import build_datasets
from ..errors import CheckpointError
from .checkpoint import ARCHITECTURE_KEYS, load_checkpoint, save_checkpoint
from .inference import check_classes, override_config, run_evaluation
from .phases import Alternating, Fusion
from .run import hold_work_dir, setup_logging
from .trainer import Trainer

# what the refit keeps from the run: everything that shapes its weights but the fusion heads
KEPT_KEYS = tuple(k for k in ARCHITECTURE_KEYS if k != "model.fusion")


def refit(run: str, fusion: str, work_dir: str, opts=()) -> dict:
    source = os.path.join(run, Alternating.best_file)
    if not os.path.exists(source):
        raise CheckpointError(f"{source} not found: --run must be the work dir of a run whose alternation has "
                              f"finished (it writes {Alternating.best_file})")
    ckpt = load_checkpoint(source)
    # the run's config, validated again with the changes; the scales and APNs it holds must still fit
    changes = {**(dict(opts) if isinstance(opts, Mapping) else parse_cli_opts(opts)),
               "model.fusion": fusion, "work_dir": work_dir}
    cfg = override_config(fill_defaults(ckpt["config"]), changes, KEPT_KEYS, source)
    datasets = build_datasets(cfg)
    check_classes(ckpt, datasets["train"].classes, source, f"the dataset in {cfg['data']['root']}")
    with hold_work_dir(work_dir):
        if os.path.exists(os.path.join(work_dir, "last.pt")):
            raise CheckpointError(f"{work_dir} already holds a run (last.pt); choose another --work-dir")
        return refit_in(ckpt, cfg, source, fusion, work_dir, datasets)


def refit_in(ckpt: dict, cfg: dict, source: str, fusion: str, work_dir: str, datasets: dict | None = None) -> dict:
    setup_logging(work_dir)
    datasets = datasets if datasets is not None else build_datasets(cfg)
    trainer = Trainer(cfg, datasets, work_dir, plan=[Fusion(cfg)])
    if Alternating.best_file in ckpt["progress"]["best"]:  # the alternation's validation score, for the log
        trainer.progress.best[Alternating.best_file] = ckpt["progress"]["best"][Alternating.best_file]
    # the scales and APNs of the finished alternation, the new (untrained) fusion heads
    fresh = {k: v for k, v in trainer.model.state_dict().items() if k.startswith("fusion.")}
    kept = {k: v for k, v in ckpt["model"].items() if not k.startswith("fusion.")}
    save_checkpoint(os.path.join(work_dir, Alternating.best_file), {**ckpt, "model": {**kept, **fresh}, "config": cfg})
    save_config(cfg, os.path.join(work_dir, "config.yaml"))
    logging.getLogger("raccnn").info("fusion %s on the scales of %s (%s)", fusion, source, ckpt.get("phase"))
    trainer.run()
    metrics, table = run_evaluation(os.path.join(work_dir, "best.pt"), "test", datasets=datasets)
    print(table)
    return metrics
