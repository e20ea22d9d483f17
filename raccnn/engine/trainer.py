"""The training loop: runs a plan of phases (``phases.py``) epoch by epoch, resumably.

Every phase goes through the same loop: at its start the trainer freezes every parameter but the
phase's, builds its optimiser (SGD with momentum and weight decay, or Adam) and a cosine schedule
over its maximum number of steps; each epoch trains on the phase's loss, validates, logs, asks the
phase whether it is done, and keeps the epoch in the phase's ``best_file`` when it beats the best
score written there (``best_alternate.pt`` for the alternation, ``best.pt`` for the fused model).
Model selection only ever looks at the validation split. A non-finite loss or gradient stops the
run at once with a ``DivergenceError`` (nothing of that step is applied or saved).

``last.pt`` is written at the end of every epoch with everything needed to continue exactly there
(model, optimiser, scheduler, phase, epoch, step, RNG states, resolved config). The sample order
of an epoch is drawn from a generator seeded by (seed, epoch counter), so a resumed run sees the
same batches as an uninterrupted one.

Stopping mid-epoch (``preemption.py``): given a ``Preemption``, ``run`` checks after every step
whether a SIGTERM, SIGINT or SIGUSR1 arrived (on any process); if so it writes ``last.pt`` at that
step, with the batches done in the epoch and the epoch's running sums (train loss, logged terms,
images and seconds), logs one line and raises ``Preempted``. A resume draws the epoch's sample
order again, skips the batches done in the sampler (without loading them) and continues with the
saved sums and RNG states, so the run ends as an uninterrupted one would. (With
``data.num_workers`` > 0 the loader's worker processes start again from the epoch's seeds, so
random augmentation drawn there differs for the rest of that epoch; the samples are the same.)

Speed and scale (``precision.py``, ``distributed.py``): the phase's forward and loss run under
``train.amp`` autocast, in channels_last when ``train.channels_last`` says so, with the scale
networks compiled when ``train.compile`` is on. Under torchrun each phase's step is wrapped in
DistributedDataParallel when its first step runs, after the freezing, so only the phase's
trainable parameters are synchronised (and DDP's construction copies rank 0's model, e.g. the
best_alternate.pt that fusion loaded, to every rank); only rank 0 writes files and events.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..config import fill_defaults
from ..data.device_input import model_normalization, to_model_input
from ..device import resolve_device
from ..errors import ConfigError, DivergenceError
from ..fileio import remove_stale_temporaries
from ..losses import hinge_active, rank_loss, scale_ce_losses
from ..models.proposers import part_index
from ..models.racnn import RACNN, build_racnn
from .checkpoint import (CheckpointError, capture_rng_state, check_compatible, load_checkpoint, restore_rng_state,
                         save_checkpoint)
from .distributed import EvalShardSampler, ShardSampler, all_equal, barrier, current_world, wrap_ddp
from .evaluate import accuracies, box_stats
from .inference import collect_outputs
from .phases import Phase, build_plan
from .preemption import Preempted, Preemption
from .precision import amp_dtype, autocast, check_compiler, grad_scaler, set_cudnn_benchmark, use_channels_last
from .visualize import fixed_images, log_box_histograms, log_phase_crops

log = logging.getLogger("raccnn")
MAX_SKIPPED_STEPS = 20  # consecutive fp16 steps the loss scaler may skip before the run counts as diverged


@dataclass
class Progress:
    """Where the schedule stands; saved in every checkpoint."""

    phase_index: int = 0
    epoch: int = 0  # epochs finished in the current phase
    step: int = 0  # optimisation steps since the start of the run
    epochs_run: int = 0  # epochs finished since the start of the run (seeds the sample order)
    best_loss: float = math.inf  # plateau tracking of the current phase
    bad_epochs: int = 0
    best: dict = field(default_factory=dict)  # best validation score kept in each best_file
    train_images: int = 0  # images seen by training steps, and the seconds they took (throughput)
    train_seconds: float = 0.0
    history: list = field(default_factory=list)
    batch: int = 0  # batches done in the current epoch (not 0 only when a stop saved mid-epoch)
    partial: dict = field(default_factory=dict)  # that epoch's running sums (``Trainer.train_epoch``)


class PhaseStep(nn.Module):
    """A phase's loss on one batch as a module, so that DistributedDataParallel can wrap it (DDP
    synchronises the gradients of what runs inside its wrapper's forward)."""

    def __init__(self, model: RACNN, phase: Phase):
        super().__init__()
        self.model, self.phase = model, phase

    def forward(self, images, target, part_boxes):
        return self.phase.loss(self.model, images, target, part_boxes)


class _NoWriter:
    """What ranks other than 0 use in place of a SummaryWriter: every call does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


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
        self.skipped_steps = 0
        self.channels_last = use_channels_last(t["channels_last"], self.device)
        self.classes = list(datasets["train"].classes)
        self.num_classes = len(self.classes)
        self.part_names = list(datasets["train"].part_names)
        d = cfg["data"]
        unknown = [name for name in d["hit_parts"] if name not in self.part_names]
        if self.part_names and unknown:  # caught here, not when the first validation scores part hits
            raise ConfigError(f"data.hit_parts: {unknown} are not parts of the dataset (parts: {self.part_names})")
        if cfg["model"]["proposer"] == "oracle" and part_index(self.part_names, d["hit_parts"]) is None:
            raise ConfigError(f"model.proposer: 'oracle' needs data.hit_parts to name a part of the dataset "
                              f"(parts: {self.part_names}), got {d['hit_parts']}")
        torch.manual_seed(cfg["seed"])
        if cfg["deterministic"]:
            # on CUDA the backward of grid_sample / interpolate has no deterministic kernel: warn there
            torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")
        set_cudnn_benchmark(t["cudnn_benchmark"], self.device, cfg["deterministic"])
        check_compiler(cfg, self.device)
        self.model: RACNN = build_racnn(cfg, self.num_classes, self.part_names)
        if cfg["model"]["sync_bn"] and self.world.distributed:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        if t["compile"]:  # in place: parameter names, state dicts and checkpoints stay the same
            for net in self.model.scales:
                net.compile()
        self.step_module: nn.Module | None = None  # the current phase's PhaseStep (DDP-wrapped under torchrun)
        self.epoch_rate = 0.0  # training images/s of the last epoch (logged)
        self.epoch_terms: dict[str, float] = {}  # the mean of every logged term over the last training epoch
        self.previous_boxes: dict[str, torch.Tensor] = {}  # the last validation's squares, to measure their moves
        self.plan = plan if plan is not None else build_plan(cfg)
        self.progress = Progress()
        self.sample_gen = torch.Generator()
        # data.batch_size is per process; the generator also seeds the loader's workers, as before
        sampler = self.train_sampler = ShardSampler(len(datasets["train"]), self.sample_gen, self.world)
        self.train_loader = DataLoader(
            datasets["train"], batch_size=d["batch_size"], sampler=sampler, drop_last=len(sampler) > d["batch_size"],
            num_workers=d["num_workers"], generator=self.sample_gen, pin_memory=self.device.type == "cuda",
        )
        self.val_loader = DataLoader(datasets["val"], batch_size=d["eval_batch_size"], num_workers=d["num_workers"],
                                     sampler=EvalShardSampler(len(datasets["val"]), self.world))
        self.optimizer = None
        self.scheduler = None
        self.preemption: Preemption | None = None  # set by ``run``: asked after every step whether to stop
        if self.world.main:
            for name in remove_stale_temporaries(work_dir):
                log.info("removed %s, left by an interrupted checkpoint write", name)
        # TensorBoard event files go into the work dir, so `tensorboard --logdir work_dirs` lists runs
        self.writer = SummaryWriter(log_dir=work_dir) if self.world.main else _NoWriter()
        self.panel_batch = fixed_images(datasets["val"], n=8)  # the same images at every phase end
        self.panel_part = part_index(datasets["val"].part_names, d["hit_parts"])

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "progress": asdict(self.progress),
            "phase": self.plan[min(self.progress.phase_index, len(self.plan) - 1)].label,
            "rng": capture_rng_state(),
            "previous_boxes": self.previous_boxes,  # so the next validation measures the boxes' moves
            "config": self.cfg,
            "num_classes": self.num_classes,
            "classes": self.classes,
            "part_names": self.part_names,
        }

    def save(self, name: str) -> None:
        if self.world.main:
            save_checkpoint(os.path.join(self.work_dir, name), self.state())

    def resume(self, path: str) -> None:
        ckpt = load_checkpoint(path)
        if isinstance(ckpt.get("config"), dict):
            ckpt["config"] = fill_defaults(ckpt["config"])  # keys added since it was written, at their defaults
        check_compatible(ckpt, self.cfg, self.num_classes)
        index = ckpt["progress"]["phase_index"]
        here = self.plan[min(index, len(self.plan) - 1)].label
        if ckpt.get("phase") != here:
            raise CheckpointError(f"{path} was written at phase {ckpt.get('phase')!r} of another plan of phases "
                                  f"(position {index} here is {here!r}); "
                                  f"a run of tools/refit_fusion.py cannot be continued by tools/train.py")
        self.model.load_state_dict(ckpt["model"])
        self.progress = Progress(**ckpt["progress"])
        if self.progress.phase_index < len(self.plan):
            self.start_phase(self.plan[self.progress.phase_index], fresh=False)
            if ckpt["optimizer"] is not None:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt["scheduler"] is not None:
                self.scheduler.load_state_dict(ckpt["scheduler"])
            self.apply_new_lr(self.plan[self.progress.phase_index])
        if ckpt.get("scaler") is not None and self.scaler is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng_state(ckpt["rng"])
        self.previous_boxes = dict(ckpt.get("previous_boxes") or {})
        # drop TensorBoard points written after this checkpoint by the interrupted run
        self.writer.close()
        if self.world.main:
            self.writer = SummaryWriter(log_dir=self.work_dir, purge_step=self.progress.step + 1)
        inside = f" (batch {self.progress.batch} of the next)" if self.progress.batch else ""
        log.info("resumed from %s at %s, epoch %d%s, step %d", path, ckpt["phase"], self.progress.epoch, inside,
                 self.progress.step)

    # ---------------------------------------------------------------- one phase
    def start_phase(self, phase: Phase, fresh: bool = True) -> None:
        """Freeze all but the phase's parameters; a new optimiser and cosine schedule for them."""
        params, sec = phase.freeze(self.model), phase.settings
        self.optimizer = phase.optimizer(params)
        total = max(1, phase.max_epochs() * len(self.train_loader))
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total)
        self.step_module = None  # wrapped again at the phase's first step, over its own parameters
        if fresh:
            self.progress.epoch, self.progress.best_loss, self.progress.bad_epochs = 0, math.inf, 0
            log.info("== phase %s: %d trainable tensors, %s lr %g, up to %d epochs", phase.label, len(params),
                     sec["optimizer"], phase.lr, phase.max_epochs())

    def apply_new_lr(self, phase: Phase) -> None:
        """After a resume: when the config now gives the phase another lr (e.g. after a divergence),
        scale the schedule to it, keeping its position (the cosine's shape is relative)."""
        new = phase.lr
        for group, old in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            if old != new and old > 0:
                group["lr"] *= new / old
                group["initial_lr"] = new
        self.scheduler.base_lrs = [new] * len(self.scheduler.base_lrs)

    def check_finite(self, phase: Phase, loss, terms: dict):
        """The gradient norm of the phase's parameters; a non-finite loss or norm stops the run.
        With the fp16 loss scaler (gradients unscaled before this) an infinite gradient is the
        scaler's business (it skips the step and lowers the scale), so only the loss counts here
        and ``count_skipped`` watches the skips."""
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else loss.new_zeros(())
        if torch.isfinite(loss.detach().float() + (0 if self.scaler else norm)):  # one host sync for both
            return norm
        self.diverged(phase, f"loss {loss.item():.4g} ({self.shown(terms)}), gradient norm {norm.item():.4g}")

    def count_skipped(self, phase: Phase, scale_before: float, terms: dict) -> None:
        self.skipped_steps = self.skipped_steps + 1 if self.scaler.get_scale() < scale_before else 0
        if self.skipped_steps >= MAX_SKIPPED_STEPS:
            self.diverged(phase, f"the fp16 loss scaler skipped {self.skipped_steps} steps in a row (scale now "
                                 f"{self.scaler.get_scale():.3g}; {self.shown(terms)})")

    @staticmethod
    def shown(terms: dict) -> str:
        return ", ".join(f"{k} {v.item():.4g}" for k, v in terms.items())

    def diverged(self, phase: Phase, what: str):
        key = "train." + ".".join(phase.section) + ".lr"
        raise DivergenceError(
            f"training diverged in {phase.label}, epoch {self.progress.epoch + 1}, step {self.progress.step + 1}: "
            f"{what}. last.pt and the best checkpoints hold the last finite epoch; lower {key} "
            f"(now {phase.settings['lr']:g}) and resume with --resume auto")

    def phase_step(self, phase: Phase) -> nn.Module:
        """The module whose forward is the phase's loss; under torchrun wrapped in DDP, built after
        the phase froze the rest of the model (DDP then hooks only the trainable parameters)."""
        if self.step_module is None:
            self.step_module = PhaseStep(self.model, phase)
            if self.world.distributed:
                self.step_module = wrap_ddp(self.step_module, self.device)
        return self.step_module

    def train_epoch(self, phase: Phase) -> float:
        """One epoch of the phase (the rest of it after a mid-epoch stop); the mean train loss.
        Stops after any step at which ``stop_requested`` says so."""
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
        for batch in bar:
            images = self.to_input(batch["image"])
            target = batch["label"].to(self.device, non_blocking=True)
            with autocast(self.device, self.amp_dtype):
                loss, terms = step(images, target, batch.get("part_boxes"))
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is None:
                loss.backward()
                terms["train/grad_norm"] = self.check_finite(phase, loss, terms)
                self.optimizer.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                terms["train/grad_norm"] = self.check_finite(phase, loss, terms)
                scale = self.scaler.get_scale()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.count_skipped(phase, scale, terms)
            self.scheduler.step()
            self.progress.step += 1
            total += loss.item() * len(images)
            count += len(images)
            for tag, value in terms.items():
                sums[tag] = sums.get(tag, 0) + value.detach().float() * len(images)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if self.progress.step % self.cfg["train"]["log_interval"] == 0:
                for tag, value in terms.items():
                    self.writer.add_scalar(tag, value.item(), self.progress.step)
                self.writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.progress.step)
            p.batch += 1
            if self.stop_requested():
                p.partial = {"loss": total, "images": count, "seconds": before + time.perf_counter() - start,
                             "terms": {k: v.cpu() for k, v in sums.items()}}
                self.stop(phase, f"in {phase.label}, epoch {p.epoch + 1} after batch {p.batch} of "
                                 f"{len(self.train_loader)}")
        self.train_sampler.skip, p.batch, p.partial = 0, 0, {}
        seconds = before + time.perf_counter() - start
        self.progress.train_images += count * self.world.size
        self.progress.train_seconds += seconds
        self.epoch_rate = count * self.world.size / max(seconds, 1e-9)  # training images/s, all ranks
        self.epoch_terms = {tag: (v / max(count, 1)).item() for tag, v in sums.items()}
        return total / max(count, 1)

    def validate(self) -> tuple[dict, dict]:
        """Validation losses, accuracies and box statistics of the current model, and the raw
        outputs (``collect_outputs``)."""
        out = collect_outputs(self.model, self.val_loader, self.device, "val", self.amp_dtype)
        label = out["label"]
        logits = [out[f"logits_scale{s + 1}"] for s in range(self.model.n_scales)]
        res = accuracies(out)
        margin = self.cfg["train"]["alternate"]["margin"]
        res["ce"] = sum(scale_ce_losses(logits, label)).item()
        res["rank"] = rank_loss(logits, label, margin=margin).item()
        for s, active in enumerate(hinge_active(logits, label, margin).tolist()):
            res[f"rank_active_{s + 1}_{s + 2}"] = active
        a = self.cfg["model"]["apn"]
        previous = self.previous_boxes
        for s in range(2, self.model.n_scales + 1):
            boxes = out[f"rel_boxes_scale{s}"]
            stats = box_stats(boxes, a["tl_min"], a["tl_max"])
            if f"scale{s}" in previous:  # mean |change| of (tx, ty, tl) on the same images since the last epoch
                stats.update(zip(("dtx", "dty", "dtl"), (boxes - previous[f"scale{s}"]).abs().mean(0).tolist()))
            res.update({f"apn{s - 1}_{k}": v for k, v in stats.items()})
        self.previous_boxes = {f"scale{s}": out[f"rel_boxes_scale{s}"] for s in range(2, self.model.n_scales + 1)}
        return res, out

    def log_validation(self, phase: Phase, train_loss: float, val: dict, out: dict) -> None:
        p = self.progress
        accs = " ".join(f"{k[4:]}={v:.3f}" for k, v in val.items() if k.startswith("acc_"))
        log.info("%s epoch %d: train loss %.4f (%.0f img/s) | val ce %.4f rank %.4f | %s", phase.label, p.epoch,
                 train_loss, self.epoch_rate, val["ce"], val["rank"], accs)
        for s in range(1, self.model.n_scales):
            moved = (f", moved |dtx| {val[f'apn{s}_dtx']:.4f} |dty| {val[f'apn{s}_dty']:.4f} |dtl| "
                     f"{val[f'apn{s}_dtl']:.4f}") if f"apn{s}_dtx" in val else ""
            log.info("  apn%d boxes: tl %.3f±%.3f, centre (%.3f±%.3f, %.3f±%.3f), at tl_min %.0f%%, at tl_max %.0f%%%s",
                     s, val[f"apn{s}_tl_mean"], val[f"apn{s}_tl_std"], val[f"apn{s}_tx_mean"], val[f"apn{s}_tx_std"],
                     val[f"apn{s}_ty_mean"], val[f"apn{s}_ty_std"],
                     100 * val[f"apn{s}_frac_at_min"], 100 * val[f"apn{s}_frac_at_max"], moved)
        active = [k for k in val if k.startswith("rank_active_")]
        log.info("  active rank hinges: val %s | train %s; train grad norm %.4g",
                 " ".join(f"{k[12:]}={val[k]:.2f}" for k in active),
                 " ".join(f"{k[18:]}={v:.2f}" for k, v in self.epoch_terms.items() if k.startswith("train/rank_active_"))
                 or "-", self.epoch_terms.get("train/grad_norm", float("nan")))
        w = self.writer
        for k, v in val.items():
            if k.startswith("apn"):  # "apn1_tl_mean" -> "apn1/tl_mean"
                apn, stat = k.split("_", 1)
                if stat in ("tl_mean", "tl_std", "tx_mean", "ty_mean", "frac_at_min", "frac_at_max", "dtx", "dty", "dtl"):
                    w.add_scalar(f"{apn}/{stat}", v, p.step)
            else:
                w.add_scalar(f"val/{k}", v, p.step)
        for tag, v in self.epoch_terms.items():  # "train/rank" -> "train_epoch/rank"
            w.add_scalar("train_epoch/" + tag.split("/", 1)[1], v, p.step)
        w.add_scalar("schedule/phase_index", p.phase_index, p.step)
        w.add_scalar("schedule/round", 0 if phase.round is None else phase.round + 1, p.step)
        log_box_histograms(w, [out[f"rel_boxes_scale{s}"] for s in range(2, self.model.n_scales + 1)], p.step)

    def select(self, phase: Phase, val: dict) -> None:
        """Keep in the phase's best_file the epoch with the best score written there so far."""
        if phase.best_file is None:
            return
        score = phase.score(self.model, val)
        if score > self.progress.best.get(phase.best_file, -1.0):
            self.progress.best[phase.best_file] = score
            self.save(phase.best_file)

    # ---------------------------------------------------------------- stopping on a signal
    def stop_requested(self) -> bool:
        """Whether a signal asks the run to stop here; under torchrun all ranks decide together
        (``Preemption.requested``), so every rank calls this at the same points."""
        return self.preemption is not None and self.preemption.requested(self.world, self.device)

    def stop(self, phase: Phase, where: str):
        """Write last.pt at this point, say so in one line and raise ``Preempted``. Every rank waits
        for rank 0's write: under torchrun a rank that exits early has the others killed."""
        signum = self.preemption.signum
        self.save("last.pt")
        self.writer.flush()
        barrier()
        stopped = Preempted(signum, reported=True)
        log.info("%s %s (step %d); last.pt holds this point: continue with --resume auto", stopped, where,
                 self.progress.step)
        raise stopped

    # ---------------------------------------------------------------- the loop
    def run(self, stop_after_step: int | None = None, preemption: Preemption | None = None) -> None:
        """Run the remaining schedule. ``stop_after_step`` ends the run after the first epoch that
        reaches that global step (used to test resuming). With ``preemption`` a signal stops the
        run after the step it arrives in (or after the epoch, when it arrives in a validation),
        with ``Preempted`` once last.pt holds that point."""
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
            if phase.max_epochs() == 0:
                done = True
            else:
                train_loss = self.train_epoch(phase)
                p.epoch += 1
                p.epochs_run += 1
                val, out = self.validate()
                self.log_validation(phase, train_loss, val, out)
                p.history.append({"phase": phase.label, "epoch": p.epoch, "step": p.step, "train_loss": train_loss, **val})
                done = phase.done(p, val)
                self.select(phase, val)
            if done:
                if self.world.main:
                    log_phase_crops(self.writer, self.model, self.panel_batch, phase.label, p.step, self.panel_part)
                phase.on_end(self)
                p.phase_index += 1
                p.epoch, p.best_loss, p.bad_epochs = 0, math.inf, 0
                self.optimizer = self.scheduler = None
            self.save("last.pt")
            if self.stop_requested():  # the signal came in a validation or between phases
                self.stop(phase, f"after {phase.label}, epoch {p.epoch}" if not done else f"after {phase.label}")
            if stop_after_step is not None and p.step >= stop_after_step:
                log.info("stopping at step %d as asked", p.step)
                self.writer.flush()
                return
        self.writer.close()
        log.info("schedule finished after %d steps", p.step)
        if self.world.distributed:
            self.check_ranks_agree()

    def to_input(self, images):
        return to_model_input(images, self.device, model_normalization(self.model), self.channels_last, non_blocking=True)

    def check_ranks_agree(self) -> None:
        """Every rank must end with the same weights (DDP averages the same gradients everywhere)."""
        digest = hashlib.sha256()
        for key, value in self.model.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        if not all_equal(digest.hexdigest()):
            raise RuntimeError(f"the {self.world.size} ranks ended with different weights")
        log.info("weights identical on all %d ranks (sha256 %s)", self.world.size, digest.hexdigest()[:16])
