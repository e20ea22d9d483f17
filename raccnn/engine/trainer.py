"""The training loop: runs a plan of phases (``phases.py``) epoch by epoch, resumably. It knows no
RA-CNN metric: what a validation measures and shows is ``validation.py``'s, what a phase trains,
when it ends and what it keeps is the phase's.

At a phase's start the trainer freezes every parameter but the phase's and builds its optimiser and
lr schedule (``schedule.py``); each epoch runs the phase's ``run_epoch`` (by default ``train_epoch``:
a step, ``step.py``, per ``train.accumulate`` batches), validates, logs, asks the phase whether it is
done and keeps the epoch in the phase's ``best_file`` when its ``score`` beats the best kept there.
In the phases that ask for it, validation and selection see the weights' moving average (``averaging.py``).

``last.pt`` is written after every epoch with all it takes to continue exactly there; an epoch's
sample order is seeded by (seed, epoch counter), and after a signal (``preemption.py``) it also holds
the batches done, which a resume skips. Under torchrun each phase's step is wrapped in DDP after the
freezing; only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from ..config import fill_defaults
from ..data.device_input import model_normalization, to_model_input
from ..device import resolve_device
from ..fileio import remove_stale_temporaries
from ..models.proposers import check_part_settings
from ..models.racnn import RACNN, build_racnn
from .accumulate import Accumulation, optimizer_steps
from .averaging import WeightAverage
from .checkpoint import (capture_rng_state, check_compatible, check_same_plan, load_checkpoint, restore_rng_state,
                         save_checkpoint)
from .distributed import check_same_weights, current_world, make_loaders, wrap_ddp
from .phases import Phase, PhaseStep, build_plan
from .preemption import Preemption
from .run import keep_epoch
from .precision import (amp_dtype, autocast, check_compiler, grad_scaler, place_model, set_cudnn_benchmark,
                        use_channels_last)
from .schedule import build_schedule, rescale_schedule
from .step import OptimizerStep
from .validation import Validation
from .visualize import open_writer

log = logging.getLogger("raccnn")


@dataclass
class Progress:
    """Where the schedule stands; saved in every checkpoint."""

    phase_index: int = 0
    epoch: int = 0  # epochs finished in the current phase
    step: int = 0  # optimisation steps since the start of the run
    epochs_run: int = 0  # epochs finished since the start of the run (seeds the sample order)
    best: dict = field(default_factory=dict)  # best validation score kept in each best_file
    train_images: int = 0  # images seen by training steps, and the seconds they took (throughput)
    train_seconds: float = 0.0
    history: list = field(default_factory=list)
    batch: int = 0  # batches done in the current epoch (not 0 only when a stop saved mid-epoch)
    partial: dict = field(default_factory=dict)  # that epoch's running sums (``Trainer.train_epoch``)


class Trainer:
    def __init__(self, cfg: dict, datasets: dict, work_dir: str, plan: list[Phase] | None = None):
        self.cfg, self.work_dir = cfg, work_dir
        self.world = current_world()
        self.device = resolve_device(cfg["device"])
        if self.device.type == "cuda" and self.world.distributed:
            self.device = torch.device("cuda", self.world.local_rank)
        t = cfg["train"]
        self.amp_dtype = amp_dtype(t["amp"], self.device)
        self.scaler = grad_scaler(self.amp_dtype, self.device)
        self.optimizer_step = OptimizerStep(self.scaler)
        self.channels_last = use_channels_last(t["channels_last"], self.device)
        self.classes, self.part_names = list(datasets["train"].classes), list(datasets["train"].part_names)
        self.num_classes = len(self.classes)
        check_part_settings(cfg, self.part_names)
        torch.manual_seed(cfg["seed"])
        if cfg["deterministic"]:
            # on CUDA the backward of grid_sample / interpolate has no deterministic kernel: warn there
            torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")
        set_cudnn_benchmark(t["cudnn_benchmark"], self.device, cfg["deterministic"])
        check_compiler(cfg, self.device)
        self.model: RACNN = place_model(build_racnn(cfg, self.num_classes, self.part_names), cfg, self.device,
                                        self.channels_last, self.world.distributed)
        self.step_module: nn.Module | None = None  # the current phase's PhaseStep (DDP-wrapped under torchrun)
        self.epoch_rate = 0.0  # training images/s of the last epoch (logged)
        self.epoch_terms: dict[str, float] = {}  # the mean of every logged term over the last training epoch
        self.plan = plan if plan is not None else build_plan(cfg)
        self.progress = Progress()
        self.sample_gen = torch.Generator()
        self.train_loader, self.train_sampler, self.val_loader = make_loaders(
            datasets, cfg["data"], self.world, self.sample_gen, self.device.type == "cuda", cfg["train"]["epoch_images"])
        self.validation = Validation(cfg, self.val_loader, self.device, self.amp_dtype)
        self.optimizer = self.scheduler = None  # set by start_phase
        self.preemption: Preemption | None = None  # set by ``run``: asked after every step whether to stop
        self.average = WeightAverage()  # of the weights, in the phases with ema_decay() > 0
        if self.world.main:
            for name in remove_stale_temporaries(work_dir):
                log.info("removed %s, left by an interrupted checkpoint write", name)
        self.writer = open_writer(work_dir, self.world.main)

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "average": self.average.state_dict(),
            "progress": asdict(self.progress),
            "phase": self.current_phase().label,
            "phase_state": self.current_phase().state_dict(),
            "rng": capture_rng_state(),
            **self.validation.state_dict(),  # e.g. the last squares, so the next validation measures their moves
            "config": self.cfg,
            "num_classes": self.num_classes,
            "classes": self.classes,
            "part_names": self.part_names,
        }

    def current_phase(self) -> Phase:
        return self.plan[min(self.progress.phase_index, len(self.plan) - 1)]

    def save(self, name: str) -> None:
        if self.world.main:
            save_checkpoint(os.path.join(self.work_dir, name), self.state())

    def resume(self, path: str) -> None:
        ckpt = load_checkpoint(path)
        if isinstance(ckpt.get("config"), dict):
            ckpt["config"] = fill_defaults(ckpt["config"])  # keys added since it was written, at their defaults
        check_compatible(ckpt, self.cfg, self.num_classes)
        check_same_plan(ckpt, [phase.label for phase in self.plan], path)
        self.model.load_state_dict(ckpt["model"])
        known = Progress.__dataclass_fields__
        self.progress = Progress(**{k: v for k, v in ckpt["progress"].items() if k in known})
        # checkpoints written before the phases kept their own state kept it in the progress
        self.current_phase().load_state_dict(ckpt.get("phase_state", ckpt["progress"]))
        self.average.load_state_dict(ckpt.get("average"), self.device)  # before start_phase, which may start one
        if self.progress.phase_index < len(self.plan):
            self.start_phase(self.plan[self.progress.phase_index], fresh=False)
            if ckpt["optimizer"] is not None:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt["scheduler"] is not None:
                self.scheduler.load_state_dict(ckpt["scheduler"])
            rescale_schedule(self.optimizer, self.scheduler, self.plan[self.progress.phase_index].lr)
        if ckpt.get("scaler") is not None and self.scaler is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng_state(ckpt["rng"])
        self.validation.load_state_dict(ckpt)
        self.writer.close()  # and drop the points the interrupted run wrote after this checkpoint
        self.writer = open_writer(self.work_dir, self.world.main, purge_step=self.progress.step + 1)
        inside = f" (batch {self.progress.batch} of the next)" if self.progress.batch else ""
        log.info("resumed from %s at %s, epoch %d%s, step %d", path, ckpt["phase"], self.progress.epoch, inside,
                 self.progress.step)

    def start_phase(self, phase: Phase, fresh: bool = True) -> None:
        """Freeze all but the phase's parameters; a new optimiser and cosine schedule for them."""
        params, sec = phase.freeze(self.model), phase.settings
        self.average.start(self.model, phase.ema_decay())
        self.optimizer = phase.optimizer(params)
        t = self.cfg["train"]
        self.scheduler = build_schedule(self.optimizer, phase.max_epochs(),
                                        optimizer_steps(len(self.train_loader), t["accumulate"]),
                                        sec.get("warmup_epochs", 0.0), t["warmup_factor"])
        self.step_module = None  # wrapped again at the phase's first step, over its own parameters
        if fresh:
            self.progress.epoch = 0
            log.info("== phase %s: %d trainable tensors, %s lr %g, up to %d epochs", phase.label, len(params),
                     sec["optimizer"], phase.lr, phase.max_epochs())

    def phase_step(self, phase: Phase) -> nn.Module:
        """The module whose forward is the phase's loss; under torchrun DDP over the unfrozen parameters."""
        if self.step_module is None:
            self.step_module = PhaseStep(self.model, phase)
            if self.world.distributed:
                self.step_module = wrap_ddp(self.step_module, self.device)
        return self.step_module

    def train_epoch(self, phase: Phase) -> float:
        """One epoch of the phase (the rest of it after a mid-epoch stop); the mean train loss."""
        p = self.progress
        phase.set_modes(self.model)
        self.sample_gen.manual_seed(self.cfg["seed"] * 100_003 + p.epochs_run)
        self.train_sampler.skip = p.batch * self.train_loader.batch_size  # the batches a stop left done
        part = p.partial  # the sums of those batches
        total, count, before = part.get("loss", 0.0), part.get("images", 0), part.get("seconds", 0.0)
        # every logged term over the epoch (host sync once, at the end)
        sums: dict[str, torch.Tensor] = {k: v.to(self.device) for k, v in part.get("terms", {}).items()}
        start = time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"{phase.label} ep {p.epoch + 1}", leave=False, initial=p.batch,
                   disable=not sys.stderr.isatty())
        step = self.phase_step(phase)
        acc = Accumulation.of(self.train_loader, self.cfg["train"]["accumulate"])  # one optimiser step per group
        for i, batch in enumerate(bar, start=p.batch):
            images = self.to_input(batch["image"])
            target = batch["label"].to(self.device, non_blocking=True)
            if acc.starts(i):
                self.optimizer.zero_grad(set_to_none=True)
                group_loss = 0
            with acc.sync(step, i):
                with autocast(self.device, self.amp_dtype):
                    loss, terms = step(images, target, phase.annotations(batch))
                weighted = acc.weighted(loss, i)
                self.optimizer_step.backward(weighted)
            group_loss = weighted.detach() + group_loss  # the group's mean loss, checked at its step
            if acc.ends(i):
                self.optimizer_step(group_loss, self.optimizer, self.scheduler, terms, phase, p)
                self.average.update(self.model, phase.ema_decay() > 0)
            total += loss.item() * len(images)
            count += len(images)
            for tag, value in terms.items():  # the gradient norm: one per group, weighted by its images
                sums[tag] = sums.get(tag, 0) + value.detach().float() * (acc.group_images(i) if tag == "train/grad_norm"
                                                                         else len(images))
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if acc.ends(i) and p.step % self.cfg["train"]["log_interval"] == 0:
                for tag, value in terms.items():
                    self.writer.add_scalar(tag, value.item(), p.step)
                self.writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], p.step)
            p.batch += 1
            if acc.ends(i) and self.stop_requested():  # a stop comes at a group's end
                p.partial = {"loss": total, "images": count, "seconds": before + time.perf_counter() - start,
                             "terms": {k: v.cpu() for k, v in sums.items()}}
                self.stop(f"in {phase.label}, epoch {p.epoch + 1} after batch {p.batch} of {len(self.train_loader)}")
        self.train_sampler.skip, p.batch, p.partial = 0, 0, {}
        seconds = before + time.perf_counter() - start
        self.progress.train_images += count * self.world.size
        self.progress.train_seconds += seconds
        self.epoch_rate = count * self.world.size / max(seconds, 1e-9)  # training images/s, all ranks
        self.epoch_terms = {tag: (v / max(count, 1)).item() for tag, v in sums.items()}
        return total / max(count, 1)

    def select(self, phase: Phase, val) -> None:
        """Keep in the phase's best_file the epoch with the best score so far (of ``selectable``
        phases); without a validation split (``val`` None) the latest epoch: the end of the schedule."""
        if phase.best_file is None or not phase.selectable():
            return
        keep_epoch(self.cfg, phase.best_file, self.work_dir, self.state, self.world.main)  # train.keep_epochs
        if val is not None:
            score = phase.score(self.model, val)
            if score <= self.progress.best.get(phase.best_file, -1.0):
                return
            self.progress.best[phase.best_file] = score
        self.save(phase.best_file)

    def stop_requested(self) -> bool:
        """Whether a signal asks the run to stop here (under torchrun all ranks decide together)."""
        return self.preemption is not None and self.preemption.requested(self.world, self.device)

    def stop(self, where: str):
        """Write last.pt at this point, say so in one line and raise ``Preempted``."""
        self.writer.flush()
        self.preemption.stop(lambda: self.save("last.pt"), where, self.progress.step)

    def run(self, stop_after_step: int | None = None, preemption: Preemption | None = None) -> None:
        """Run the remaining schedule. ``stop_after_step`` ends the run after the first epoch that
        reaches that global step (used to test resuming). With ``preemption`` a signal stops the run
        after the step (or validation) it arrives in, with ``Preempted`` once last.pt holds that point."""
        self.preemption = preemption
        with preemption.deferred() if preemption is not None else contextlib.nullcontext():
            self.run_plan(stop_after_step)

    def run_plan(self, stop_after_step: int | None) -> None:
        p = self.progress
        while p.phase_index < len(self.plan):
            phase = self.plan[p.phase_index]
            if self.optimizer is None:
                self.start_phase(phase)
            if p.epoch == 0 and p.batch == 0:  # not again when a stop came in the phase's first epoch
                phase.on_start(self)
            done = p.epoch >= phase.max_epochs() or self.run_epoch(phase)
            if done:
                if self.world.main:
                    with self.average.applied(self.model, phase.ema_decay() > 0):
                        self.validation.phase_end(self.writer, self.model, phase.label, p.step)
                phase.on_end(self)
                p.phase_index += 1
                p.epoch = 0
                self.optimizer = self.scheduler = None
            self.save("last.pt")
            if self.stop_requested():  # the signal came in a validation or between phases
                self.stop(f"after {phase.label}, epoch {p.epoch}" if not done else f"after {phase.label}")
            if stop_after_step is not None and p.step >= stop_after_step:
                log.info("stopping at step %d as asked", p.step)
                self.writer.flush()
                return
        self.writer.close()
        log.info("schedule finished after %d steps", p.step)
        if self.world.distributed:
            check_same_weights(self.model, self.world)

    def run_epoch(self, phase: Phase) -> bool:
        """One epoch of the phase, then validate, log, record, select; whether the phase is done."""
        p = self.progress
        self.epoch_rate, self.epoch_terms = 0.0, {}
        train_loss = phase.run_epoch(self)
        p.epoch += 1
        p.epochs_run += 1
        with self.average.applied(self.model, phase.ema_decay() > 0):
            val = self.validation(self.model)  # None without a validation split
            self.validation.report(log, self.writer, val, p.step, phase.label, p.epoch, train_loss, self.epoch_rate,
                                   self.epoch_terms)
            for tag, v in self.epoch_terms.items():  # "train/ce_scale1" -> "train_epoch/ce_scale1"
                self.writer.add_scalar("train_epoch/" + tag.split("/", 1)[1], v, p.step)
            self.writer.add_scalar("schedule/phase_index", p.phase_index, p.step)
            self.writer.add_scalar("schedule/round", 0 if phase.round is None else phase.round + 1, p.step)
            p.history.append({"phase": phase.label, "epoch": p.epoch, "step": p.step, "train_loss": train_loss,
                              **(val.row() if val is not None else {})})
            done = phase.done(p, val)
            self.select(phase, val)
        return done

    def to_input(self, images):
        return to_model_input(images, self.device, model_normalization(self.model), self.channels_last, non_blocking=True)
