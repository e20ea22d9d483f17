"""The alternating RA-CNN schedule, as a list of named, resumable phases.

    pretrain_cls    scale 1's network fine-tuned on whole images with cross-entropy, then copied
                    into every other scale, so that all scales start from the same initialisation
                    (the paper initialises all three from the same ImageNet VGG). The copy is also
                    what makes init_apn meaningful for scales 2+: their last-conv responses come
                    from a network that has learnt what to look at.
    init_apn        each APN regresses a square centred on the strongest response of its scale's
                    last conv layer (channels summed, at feature resolution), half side
                    ``train.init_apn.tl``.
    alternate_cls   (round r) APNs frozen: classifiers trained on the sum of the scales' CE.
    alternate_apn   (round r) classifiers frozen: APNs trained on the rank loss.
                    Each alternating sub-phase stops when its own validation loss has not improved
                    by ``min_delta`` for ``patience`` epochs, within [min_epochs, max_epochs].
    fusion          backbones frozen: the fusion heads over the concatenated scale features.

Before ``fusion`` the weights of the alternating epoch with the best validation accuracy (mean over
scales) are restored;
``best.pt`` then holds the fused model with the best validation accuracy of the last fusion head.
Model selection only ever looks at the validation split.

``last.pt`` is written at the end of every epoch with everything needed to continue exactly there
(model, optimiser, scheduler, phase, round, epoch, step, RNG states, resolved config). The sample
order of an epoch is drawn from a generator seeded by (seed, epoch counter), so a resumed run sees
the same batches as an uninterrupted one.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..config import ConfigError
from ..losses import rank_loss, scale_ce_losses
from ..models.racnn import RACNN, build_racnn, fusion_name
from .checkpoint import capture_rng_state, check_compatible, load_checkpoint, restore_rng_state, save_checkpoint
from .evaluate import box_stats, collect_outputs
from .visualize import fixed_images, log_box_histograms, log_phase_crops, part_index

log = logging.getLogger("raccnn")


@dataclass
class Phase:
    name: str  # pretrain_cls | init_apn | alternate_cls | alternate_apn | fusion
    round: int = 0

    @property
    def label(self) -> str:
        return f"{self.name}[round {self.round + 1}]" if self.name.startswith("alternate") else self.name


def build_plan(cfg: dict) -> list[Phase]:
    """The phases in order; a non-learned proposer (model.proposer != apn) has no APN phases."""
    learned = cfg["model"]["proposer"] == "apn"
    plan = [Phase("pretrain_cls")] + ([Phase("init_apn")] if learned else [])
    for r in range(cfg["train"]["alternate"]["rounds"]):
        plan += [Phase("alternate_cls", r)] + ([Phase("alternate_apn", r)] if learned else [])
    plan.append(Phase("fusion"))
    return plan


@dataclass
class Progress:
    """Where the schedule stands; saved in every checkpoint."""

    phase_index: int = 0
    epoch: int = 0  # epochs finished in the current phase
    step: int = 0  # optimisation steps since the start of the run
    epochs_run: int = 0  # epochs finished since the start of the run (seeds the sample order)
    best_loss: float = math.inf  # plateau tracking of the current phase
    bad_epochs: int = 0
    best_score: float = -1.0  # best validation accuracy before fusion (mean over scales)
    best_fused: float = -1.0  # best validation accuracy of the last fusion head
    train_images: int = 0  # images seen by training steps, and the seconds they took (throughput)
    train_seconds: float = 0.0
    history: list = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but no CUDA device is available (set device=cpu or auto)")
    return torch.device(name)


class Trainer:
    def __init__(self, cfg: dict, datasets: dict, work_dir: str):
        self.cfg, self.work_dir = cfg, work_dir
        self.device = resolve_device(cfg["device"])
        self.num_classes = len(datasets["train"].classes)
        self.classes = list(datasets["train"].classes)
        torch.manual_seed(cfg["seed"])
        if cfg["deterministic"]:
            # on CUDA the backward of grid_sample / interpolate has no deterministic kernel: warn there
            torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")
        self.model: RACNN = build_racnn(cfg, self.num_classes).to(self.device)
        self.model.oracle_part = part_index(datasets["train"].part_names, cfg["data"]["hit_parts"])
        if self.model.proposer == "oracle" and self.model.oracle_part is None:
            raise ConfigError(f"model.proposer: 'oracle' needs data.hit_parts to name a part of the dataset "
                              f"(parts: {list(datasets['train'].part_names)}), got {cfg['data']['hit_parts']}")
        self.plan = build_plan(cfg)
        self.progress = Progress()
        self.sample_gen = torch.Generator()
        d = cfg["data"]
        self.train_loader = DataLoader(
            datasets["train"], batch_size=d["batch_size"], shuffle=True, drop_last=len(datasets["train"]) > d["batch_size"],
            num_workers=d["num_workers"], generator=self.sample_gen, pin_memory=self.device.type == "cuda",
        )
        self.val_loader = DataLoader(datasets["val"], batch_size=d["eval_batch_size"], num_workers=d["num_workers"])
        self.optimizer = None
        self.scheduler = None
        # TensorBoard event files go into the work dir, so `tensorboard --logdir work_dirs` lists runs
        self.writer = SummaryWriter(log_dir=work_dir)
        self.panel_batch = fixed_images(datasets["val"], n=8)  # the same images at every phase end
        self.panel_part = part_index(datasets["val"].part_names, d["hit_parts"])

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "progress": asdict(self.progress),
            "phase": self.plan[min(self.progress.phase_index, len(self.plan) - 1)].label,
            "rng": capture_rng_state(),
            "config": self.cfg,
            "num_classes": self.num_classes,
            "classes": self.classes,
        }

    def save(self, name: str) -> None:
        save_checkpoint(os.path.join(self.work_dir, name), self.state())

    def resume(self, path: str) -> None:
        ckpt = load_checkpoint(path, weights_only=False)
        check_compatible(ckpt, self.cfg, self.num_classes)
        self.model.load_state_dict(ckpt["model"])
        self.progress = Progress(**ckpt["progress"])
        if self.progress.phase_index < len(self.plan):
            self.start_phase(self.plan[self.progress.phase_index], fresh=False)
            if ckpt["optimizer"] is not None:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt["scheduler"] is not None:
                self.scheduler.load_state_dict(ckpt["scheduler"])
        restore_rng_state(ckpt["rng"])
        # drop TensorBoard points written after this checkpoint by the interrupted run
        self.writer.close()
        self.writer = SummaryWriter(log_dir=self.work_dir, purge_step=self.progress.step + 1)
        log.info("resumed from %s at %s, epoch %d, step %d", path, ckpt["phase"], self.progress.epoch, self.progress.step)

    # ---------------------------------------------------------------- phases
    def phase_section(self, phase: Phase) -> dict:
        """The config section of a phase (lr, optimizer, epochs or epoch caps)."""
        t = self.cfg["train"]
        if phase.name == "alternate_cls":
            return t["alternate"]["cls"]
        if phase.name == "alternate_apn":
            return t["alternate"]["apn"]
        return t[phase.name]

    def phase_params(self, phase: Phase) -> list:
        m = self.model
        if phase.name == "pretrain_cls":
            return list(m.scales[0].parameters())
        if phase.name == "alternate_cls":
            return m.classifier_parameters()
        if phase.name in ("init_apn", "alternate_apn"):
            return m.apn_parameters()
        return m.fusion_parameters()

    def max_epochs(self, phase: Phase) -> int:
        sec = self.phase_section(phase)
        return sec["max_epochs"] if "max_epochs" in sec else sec["epochs"]

    def start_phase(self, phase: Phase, fresh: bool = True) -> None:
        params, sec = self.phase_params(phase), self.phase_section(phase)
        trainable = {id(p) for p in params}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in trainable)
        t = self.cfg["train"]
        if sec["optimizer"] == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=sec["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
        else:  # the APN's few parameters regress boxes; Adam needs no per-problem lr tuning there
            self.optimizer = torch.optim.Adam(params, lr=sec["lr"])
        total = max(1, self.max_epochs(phase) * len(self.train_loader))
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total)
        if fresh:
            self.progress.epoch, self.progress.best_loss, self.progress.bad_epochs = 0, math.inf, 0
            log.info("== phase %s: %d trainable tensors, %s lr %g, up to %d epochs", phase.label, len(params),
                     sec["optimizer"], sec["lr"], self.max_epochs(phase))

    def set_modes(self, phase: Phase) -> None:
        """Frozen parts run in eval mode, so their BatchNorm statistics do not move either."""
        self.model.eval()
        if phase.name == "pretrain_cls":
            self.model.scales[0].train()
        elif phase.name == "alternate_cls":
            self.model.scales.train()
        elif phase.name in ("init_apn", "alternate_apn"):
            self.model.apns.train()
        else:
            self.model.fusion.train()

    def peak_targets(self, fmap: torch.Tensor, tl: float) -> torch.Tensor:
        """Square centred on the strongest channel-summed response, at feature resolution."""
        b, _, h, w = fmap.shape
        flat = fmap.sum(dim=1).flatten(1).argmax(dim=1)
        rows, cols = torch.div(flat, w, rounding_mode="floor"), flat % w
        cx, cy = (cols.float() + 0.5) / w, (rows.float() + 0.5) / h
        return torch.stack((cx, cy, torch.full_like(cx, tl)), dim=1)

    def phase_loss(self, phase: Phase, images: torch.Tensor, target: torch.Tensor, part_boxes=None):
        """The loss a phase minimises, and the named terms to log (TensorBoard tags)."""
        m, t = self.model, self.cfg["train"]

        def forward(**kwargs):  # part boxes feed the oracle proposer, other proposers ignore them
            return m(images, part_boxes=part_boxes, **kwargs)

        if phase.name == "pretrain_cls":
            logits, _, _ = m.scales[0](m.scale_input(images, None, 0))
            loss = F.cross_entropy(logits, target)
            return loss, {"train/ce_scale1": loss}
        if phase.name == "init_apn":
            with torch.no_grad():  # feature maps along the APNs' current squares
                maps = forward().maps
            loss = images.new_zeros(())
            for s, apn in enumerate(m.apns):
                goal = apn.to_box(apn.from_box(self.peak_targets(maps[s], t["init_apn"]["tl"])))
                loss = loss + F.mse_loss(apn(maps[s]), goal)
            return loss, {"train/init_apn_mse": loss}
        if phase.name == "alternate_cls":
            # APNs frozen: their squares are fixed inputs, no gradient flows back through them
            ces = scale_ce_losses(forward(detach_boxes=True).logits, target)
            return sum(ces), {f"train/ce_scale{s + 1}": ce for s, ce in enumerate(ces)}
        if phase.name == "alternate_apn":
            loss = rank_loss(forward().logits, target, margin=t["alternate"]["margin"])
            return loss, {"train/rank": loss}
        with torch.no_grad():
            feats = forward().features
        ces = {f"train/ce_fused{name}": F.cross_entropy(head(torch.cat(feats[: len(name)], 1)), target)
               for name, head in m.fusion.items()}
        return sum(ces.values()), ces

    def train_epoch(self, phase: Phase) -> float:
        self.set_modes(phase)
        self.sample_gen.manual_seed(self.cfg["seed"] * 100_003 + self.progress.epochs_run)
        total, count, start = 0.0, 0, time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"{phase.label} ep {self.progress.epoch + 1}", leave=False,
                   disable=not sys.stderr.isatty())
        for batch in bar:
            images = batch["image"].to(self.device, non_blocking=True)
            target = batch["label"].to(self.device, non_blocking=True)
            loss, terms = self.phase_loss(phase, images, target, batch.get("part_boxes"))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.progress.step += 1
            total += loss.item() * len(images)
            count += len(images)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if self.progress.step % self.cfg["train"]["log_interval"] == 0:
                for tag, value in terms.items():
                    self.writer.add_scalar(tag, value.item(), self.progress.step)
                self.writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.progress.step)
        self.progress.train_images += count
        self.progress.train_seconds += time.perf_counter() - start
        return total / max(count, 1)

    def validate(self) -> tuple[dict, dict]:
        """Validation losses, accuracies and box statistics of the current model, and the raw
        outputs (``collect_outputs``)."""
        out = collect_outputs(self.model, self.val_loader, self.device, desc="val")
        label = out["label"]
        logits = [out[f"logits_scale{s + 1}"] for s in range(self.model.n_scales)]
        res = {f"acc_scale{s + 1}": (l.argmax(1) == label).float().mean().item() for s, l in enumerate(logits)}
        for name in self.model.fusion:
            res[f"acc_fused{name}"] = (out[f"logits_fused{name}"].argmax(1) == label).float().mean().item()
        res["ce"] = sum(scale_ce_losses(logits, label)).item()
        if len(logits) > 1:
            res["rank"] = rank_loss(logits, label, margin=self.cfg["train"]["alternate"]["margin"]).item()
        a = self.cfg["model"]["apn"]
        for s in range(2, self.model.n_scales + 1):
            stats = box_stats(out[f"rel_boxes_scale{s}"], a["tl_min"], a["tl_max"])
            res.update({f"apn{s - 1}_{k}": v for k, v in stats.items()})
        return res, out

    def log_validation(self, phase: Phase, train_loss: float, val: dict, out: dict) -> None:
        p = self.progress
        accs = " ".join(f"{k[4:]}={v:.3f}" for k, v in val.items() if k.startswith("acc_"))
        log.info("%s epoch %d: train loss %.4f | val ce %.4f rank %.4f | %s", phase.label, p.epoch, train_loss,
                 val["ce"], val.get("rank", float("nan")), accs)
        for s in range(1, self.model.n_scales):
            log.info("  apn%d boxes: tl %.3f±%.3f, centre (%.3f±%.3f, %.3f±%.3f), at tl_min %.0f%%, at tl_max %.0f%%",
                     s, val[f"apn{s}_tl_mean"], val[f"apn{s}_tl_std"], val[f"apn{s}_tx_mean"], val[f"apn{s}_tx_std"],
                     val[f"apn{s}_ty_mean"], val[f"apn{s}_ty_std"],
                     100 * val[f"apn{s}_frac_at_min"], 100 * val[f"apn{s}_frac_at_max"])
        w = self.writer
        for k, v in val.items():
            if k.startswith("apn"):  # "apn1_tl_mean" -> "apn1/tl_mean"
                apn, stat = k.split("_", 1)
                if stat in ("tl_mean", "tl_std", "tx_mean", "ty_mean", "frac_at_min", "frac_at_max"):
                    w.add_scalar(f"{apn}/{stat}", v, p.step)
            else:
                w.add_scalar(f"val/{k}", v, p.step)
        w.add_scalar("schedule/phase_index", p.phase_index, p.step)
        w.add_scalar("schedule/round", phase.round + 1 if phase.name.startswith("alternate") else 0, p.step)
        log_box_histograms(w, [out[f"rel_boxes_scale{s}"] for s in range(2, self.model.n_scales + 1)], p.step)

    def phase_done(self, phase: Phase, val: dict) -> bool:
        """Epoch caps, and for the alternating sub-phases the plateau of their own val loss."""
        p = self.progress
        if p.epoch >= self.max_epochs(phase):
            return True
        if not phase.name.startswith("alternate"):
            return False
        a = self.phase_section(phase)
        loss = val["ce"] if phase.name == "alternate_cls" else val["rank"]
        if loss < p.best_loss - a["min_delta"]:
            p.best_loss, p.bad_epochs = loss, 0
        else:
            p.bad_epochs += 1
        return p.epoch >= a["min_epochs"] and p.bad_epochs >= a["patience"]

    def select(self, phase: Phase, val: dict) -> None:
        """Keep best.pt: among the alternating rounds, the best mean scale accuracy; during fusion,
        the best accuracy of the last fusion head (fusion starts from the former)."""
        p = self.progress
        if phase.name == "fusion":
            score = val[f"acc_fused{fusion_name(self.model.n_scales)}"] if self.model.fusion else val["acc_scale1"]
            if score > p.best_fused:
                p.best_fused = score
                self.save("best.pt")
        elif phase.name.startswith("alternate"):
            score = sum(val[f"acc_scale{s + 1}"] for s in range(self.model.n_scales)) / self.model.n_scales
            if score > p.best_score:
                p.best_score = score
                self.save("best.pt")

    def run(self, stop_after_step: int | None = None) -> None:
        """Run the remaining schedule. ``stop_after_step`` ends the run after the first epoch that
        reaches that global step (used to test resuming)."""
        p = self.progress
        while p.phase_index < len(self.plan):
            phase = self.plan[p.phase_index]
            if self.optimizer is None:
                self.start_phase(phase)
            if phase.name == "fusion" and p.epoch == 0 and os.path.exists(os.path.join(self.work_dir, "best.pt")):
                best = load_checkpoint(os.path.join(self.work_dir, "best.pt"), weights_only=False)
                self.model.load_state_dict(best["model"])
                log.info("fusion starts from best.pt (%s, val mean scale accuracy %.3f)", best["phase"], p.best_score)
            if self.max_epochs(phase) == 0:
                done, val = True, None
            else:
                train_loss = self.train_epoch(phase)
                p.epoch += 1
                p.epochs_run += 1
                val, out = self.validate()
                self.log_validation(phase, train_loss, val, out)
                p.history.append({"phase": phase.label, "epoch": p.epoch, "step": p.step, "train_loss": train_loss, **val})
                done = self.phase_done(phase, val)
                self.select(phase, val)
            if done:
                log_phase_crops(self.writer, self.model, self.panel_batch, phase.label, p.step, self.panel_part)
                if phase.name == "pretrain_cls":
                    for net in self.model.scales[1:]:
                        net.load_state_dict(self.model.scales[0].state_dict())
                p.phase_index += 1
                p.epoch, p.best_loss, p.bad_epochs = 0, math.inf, 0
                self.optimizer = self.scheduler = None
            self.save("last.pt")
            if stop_after_step is not None and p.step >= stop_after_step:
                log.info("stopping at step %d as asked", p.step)
                self.writer.flush()
                return
        self.writer.close()
        log.info("schedule finished after %d steps", p.step)
