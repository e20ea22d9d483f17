"""The phases of the RA-CNN schedule, one class each; ``build_plan`` lists them in order.

    pretrain_cls    scale 1's network fine-tuned on whole images with cross-entropy, then copied
                    into every other scale, so that all scales start from the same initialisation
                    (the paper initialises all three from the same ImageNet VGG). The copy is also
                    what makes init_apn meaningful for scales 2+: their last-conv responses come
                    from a network that has learnt what to look at.
    init_apn        each APN regresses a square centred on the strongest response of its scale's
                    last conv layer (``APN.init_loss``), half side ``train.init_apn.tl``.
    alternate_cls   (round r) APNs frozen: classifiers trained on the sum of the scales' CE.
    alternate_apn   (round r) classifiers frozen: APNs trained on the rank loss, or on a label-driven
                    localiser that scores other squares (``train.alternate.localiser``, localisers.py).
                    Each alternating sub-phase stops when its own validation loss has not improved
                    by ``min_delta`` for ``patience`` epochs, within [min_epochs, max_epochs].
    joint           (off unless ``train.joint.epochs`` > 0) scales and APNs trained together on
                    the sum of the scales' CE + ``rank_weight`` x rank loss, the CE's gradient also
                    reaching the squares: the single-phase training most later re-implementations
                    use, kept to compare with the alternation (experiments/grids/schedule.yaml).
    fusion          backbones frozen: the fusion heads (``model.fusion``: a linear layer over the
                    concatenated scale features trained on the training split, or per-scale
                    weights on the log-probabilities fitted on the validation split), starting
                    from the alternating (or joint) epoch with the best validation accuracy.

A phase holds what is specific to it: its config section (lr, optimizer, epochs), the submodule
it trains (which alone runs in train mode: frozen BatchNorm statistics do not move), its loss and
the terms it logs, its stopping rule, the file its best epoch is kept in, and what happens at its
start and end, and the state it carries between epochs (``state_dict``: the plateau counters).
The trainer (``trainer.py``) runs every phase with the same loop: an epoch (``run_epoch``), the
validation (``validation.py``), the history, ``done`` and the selection by ``score``. A new phase is a new subclass and one line
in ``build_plan`` (or a plan passed to ``Trainer``).
"""
from __future__ import annotations

import logging
import math
import os
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..localisers import build_localiser
from ..losses import hinge_active, rank_loss, scale_ce_losses
from ..models.fusion import LogProbFusion, fit_log_prob_weights
from ..models.racnn import RACNN
from ..train_options import OPTIMIZERS
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import barrier, broadcast_from_rank0, current_world
from .validation import ValidationResult

log = logging.getLogger("raccnn")


class PhaseStep(nn.Module):
    """A phase's loss on one batch as a module, so that DistributedDataParallel can wrap it (DDP
    synchronises the gradients of what runs inside its wrapper's forward)."""

    def __init__(self, model: RACNN, phase: "Phase"):
        super().__init__()
        self.model, self.phase = model, phase

    def forward(self, images, target, annotations):
        return self.phase.loss(self.model, images, target, annotations)


class Phase:
    """One unit of the schedule. Subclasses set ``name`` and ``section`` (keys under ``train``)
    and override what differs; ``round`` is the alternation round (None outside the alternation)."""

    name = "phase"
    section: tuple[str, ...] = ()
    trains = ""  # the submodule of the model whose parameters the phase trains, e.g. "proposers"
    best_file: str | None = None  # where the epoch with the best ``score`` is kept (None: not kept)

    def __init__(self, cfg: dict, round: int | None = None):
        self.cfg, self.round = cfg, round

    @property
    def label(self) -> str:
        return self.name if self.round is None else f"{self.name}[round {self.round + 1}]"

    @property
    def settings(self) -> dict:
        """The phase's config section: ``lr``, ``optimizer`` and ``epochs`` or ``max_epochs``."""
        node = self.cfg["train"]
        for key in self.section:
            node = node[key]
        return node

    @property
    def lr(self) -> float:
        """The phase's starting lr: ``lr``, times ``lr_decay`` per earlier round in the alternation."""
        s = self.settings
        return s["lr"] * s.get("lr_decay", 1.0) ** (self.round or 0)

    def max_epochs(self) -> int:
        s = self.settings
        return s["max_epochs"] if "max_epochs" in s else s["epochs"]

    def selectable(self) -> bool:
        """Whether the phase's epochs compete for its ``best_file``."""
        return True

    def ema_decay(self) -> float:
        """The decay of the weights' moving average that validation and selection see in this phase
        (``averaging.py``); 0: the weights as trained."""
        return 0.0

    @property
    def smoothing(self) -> float:
        """``train.label_smoothing`` of every training cross-entropy (validation's stay unsmoothed)."""
        return self.cfg["train"].get("label_smoothing", 0.0)

    def parameters(self, model: RACNN) -> list[nn.Parameter]:
        """What the phase's optimiser steps: the parameters of ``train_modules``."""
        return [p for module in self.train_modules(model) for p in module.parameters()]

    def train_modules(self, model: RACNN) -> list[nn.Module]:
        """Modules in train mode during the phase's steps (all others run in eval mode)."""
        return [model.get_submodule(self.trains)]

    def optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The phase's optimiser over ``params``: SGD with ``train.momentum`` and ``train.weight_decay``,
        or Adam without weight decay (the APNs' few parameters regress boxes; Adam needs no
        per-problem lr tuning there). Both fused: one kernel per step instead of one op per tensor
        and term, the same update up to float rounding (both timed on the CPU in docs/speed.md)."""
        s, t = self.settings, self.cfg["train"]
        if s["optimizer"] == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=t["momentum"], weight_decay=t["weight_decay"],
                                   fused=True)
        return torch.optim.Adam(params, lr=self.lr, fused=True)

    def freeze(self, model: RACNN) -> list[nn.Parameter]:
        """Let only the phase's parameters require gradient; returns them."""
        params = self.parameters(model)
        trainable = {id(p) for p in params}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        return params

    def set_modes(self, model: RACNN) -> None:
        """Frozen parts run in eval mode, so their BatchNorm statistics do not move either."""
        model.eval()
        for module in self.train_modules(model):
            module.train()

    def annotations(self, batch: dict) -> Tensor | None:
        """What of a batch, besides images and labels, ``loss`` reads: the part boxes (the oracle
        proposer zooms on them)."""
        return batch.get("part_boxes")

    def loss(self, model: RACNN, images: Tensor, target: Tensor, part_boxes: Tensor | None):
        """(loss to minimise, {TensorBoard tag: term}) of one batch."""
        raise NotImplementedError

    def run_epoch(self, trainer) -> float:
        """One epoch of the phase: by default the trainer's steps on ``loss``; the mean train loss."""
        return trainer.train_epoch(self)

    def done(self, progress, val: ValidationResult | None) -> bool:
        """Whether the phase ends after this epoch (``progress.epoch`` epochs done); ``val`` is None
        without a validation split."""
        return progress.epoch >= self.max_epochs()

    def score(self, model: RACNN, val: ValidationResult) -> float:
        """The validation score of an epoch, compared among the epochs kept in ``best_file``."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What the phase carries from epoch to epoch (saved in every checkpoint)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict``'s values."""

    def on_start(self, trainer) -> None:
        """Before the phase's first epoch (also when a run resumes there)."""

    def on_end(self, trainer) -> None:
        """After its last epoch, before ``last.pt`` records the next phase."""


class PretrainCls(Phase):
    """Scale 1 on whole images. With ``train.pretrain_cls.tries`` K > 1 the plan holds K of these
    (``round`` = the try): each starts from the weights scale 1 had before the first
    (pretrain_start.pt; the sample order, augmentations and mixup draws differ), and the try whose
    last epoch has the best validation accuracy of scale 1 is kept (best_pretrain.pt) and copied
    into the other scales; ``runner_up_scales`` take the second-best try (runner_up_pretrain.pt).
    On a small training split the start init_apn gets from scale 1's responses varies much from one
    pretraining to the next (docs/results.md)."""

    name, section, trains = "pretrain_cls", ("pretrain_cls",), "scales.0"
    start_file, kept_file, runner_up_file = "pretrain_start.pt", "best_pretrain.pt", "runner_up_pretrain.pt"

    @property
    def label(self) -> str:
        return self.name if self.round is None else f"{self.name}[try {self.round + 1}]"

    def on_start(self, trainer):
        if self.round is None:
            return
        path, scale = os.path.join(trainer.work_dir, self.start_file), trainer.model.scales[0]
        if self.round == 0:
            self.save_scale(path, scale)
        else:
            self.load_scale(path, scale)

    @staticmethod
    def save_scale(path: str, scale: nn.Module) -> None:
        if current_world().main:  # under torchrun rank 0 writes, the others read it (``load_scale``)
            save_checkpoint(path, {"scale": scale.state_dict()})

    @staticmethod
    def load_scale(path: str, *scales: nn.Module) -> None:
        barrier()  # every process reads the file rank 0 finished writing
        state = load_checkpoint(path)["scale"]
        for scale in scales:
            scale.load_state_dict(state)

    def loss(self, model, images, target, part_boxes):
        alpha = self.settings["mixup"]
        if alpha > 0:  # mixup (Zhang et al. 2018): each image blended with another of the batch. timm's Mixup
            # pairs image i with B - 1 - i and refuses an odd batch, which an epoch's last one can be
            lam = float(torch.distributions.Beta(alpha, alpha).sample())
            other = torch.randperm(len(images), device=images.device)
            images = lam * images + (1 - lam) * images[other]
        logits, _, _ = model.scales[0](model.scale_input(images, None, 0))
        ce = partial(F.cross_entropy, logits.float(), label_smoothing=self.smoothing)
        loss = ce(target) if alpha <= 0 else lam * ce(target) + (1 - lam) * ce(target[other])
        return loss, {"train/ce_scale1": loss}

    def on_end(self, trainer):
        if self.round is not None and not self.keep_best_try(trainer):
            return  # another try follows
        for net in trainer.model.scales[1:]:
            net.load_state_dict(trainer.model.scales[0].state_dict())
        if runner_up := self.settings["runner_up_scales"]:  # a second start for these scales
            path = os.path.join(trainer.work_dir, self.runner_up_file)
            self.load_scale(path, *(trainer.model.scales[s - 1] for s in runner_up))
            log.info("%s: scales %s start from the runner-up try (%s)", self.name, runner_up, self.runner_up_file)

    def keep_runner_up(self, trainer, score: float, better: bool) -> None:
        """Keep the second-best try so far in runner_up_pretrain.pt, before best_pretrain.pt changes:
        a try better than the best makes the best the runner-up; another, if it beats the runner-up."""
        best, runner_up = trainer.progress.best, os.path.join(trainer.work_dir, self.runner_up_file)
        if better and self.kept_file in best:
            best[self.runner_up_file] = best[self.kept_file]
            if current_world().main:  # written whole or not at all, as every checkpoint
                save_checkpoint(runner_up, load_checkpoint(os.path.join(trainer.work_dir, self.kept_file)))
        elif not better and score > best.get(self.runner_up_file, -1.0):
            best[self.runner_up_file] = score
            self.save_scale(runner_up, trainer.model.scales[0])

    def keep_best_try(self, trainer) -> bool:
        """Keep this try's scale 1 in best_pretrain.pt if its validation accuracy beats the earlier
        tries' (a tie keeps the earlier); after the last try, load the kept one. Whether this was
        the last try."""
        scale, best, path = trainer.model.scales[0], trainer.progress.best, os.path.join(trainer.work_dir, self.kept_file)
        score, last = trainer.progress.history[-1]["acc_scale1"], self.round + 1 == self.settings["tries"]
        better = score > best.get(self.kept_file, -1.0)
        if self.settings["runner_up_scales"]:
            self.keep_runner_up(trainer, score, better)
        if better:
            best[self.kept_file] = score
            self.save_scale(path, scale)
        log.info("%s: val accuracy of scale 1 %.4f, the best try's %.4f%s", self.label, score, best[self.kept_file],
                 "" if not last else ", this try kept" if better else f", {self.kept_file} kept")
        if last and not better:
            self.load_scale(path, scale)
        return last


class InitAPN(Phase):
    name, section, trains = "init_apn", ("init_apn",), "proposers"

    def loss(self, model, images, target, part_boxes):
        with torch.no_grad():  # feature maps along the APNs' current squares
            out = model(images, part_boxes=part_boxes)
        loss, settings = images.new_zeros(()), self.cfg["train"]["init_apn"]
        for s, apn in enumerate(model.proposers):
            fmap = out.maps[s]
            peak_map = (class_activation_map(fmap.float(), model.scales[s].classifier, target)
                        if settings["target"] == "class" else None)
            loss = loss + apn.init_loss(fmap, settings["tl"], peak_map)
        return loss, {"train/init_apn_mse": loss, **_active_terms(out.logits, target, self.cfg)}


def class_activation_map(fmap: Tensor, classifier: nn.Linear, target: Tensor) -> Tensor:
    """The true class's activation map [B, 1, h, w] of a scale's last conv ``fmap`` [B, C, h, w]:
    sum_c W[y, c] fmap_c with its classifier's weights W for class y (CAM, Zhou et al. 2016). Its
    peak is where the features speak for the true class; the channel sum's peak is merely where they
    are strongest, which a weak classifier puts on whatever is salient (``train.init_apn.target``)."""
    weights = classifier.weight.detach().float()[target]  # [B, C]
    return torch.einsum("bchw,bc->bhw", fmap, weights)[:, None]


class Alternating(Phase):
    """A sub-phase of the alternation: stops on the plateau of its own validation loss
    (``monitor``, a ``ValidationResult`` field); the epoch with the best mean accuracy over scales is
    kept in best_alternate.pt. The plateau's state (best loss so far, epochs without improvement) is
    the phase's own, saved with every checkpoint."""

    monitor = ""
    best_file = "best_alternate.pt"

    def __init__(self, cfg: dict, round: int | None = None):
        super().__init__(cfg, round)
        self.best_loss, self.bad_epochs = math.inf, 0

    def done(self, progress, val):
        if progress.epoch >= self.max_epochs() or val is None:  # no validation split: max_epochs
            return progress.epoch >= self.max_epochs()
        s, loss = self.settings, getattr(val, self.monitor)
        if loss < self.best_loss - s["min_delta"]:
            self.best_loss, self.bad_epochs = loss, 0
        else:
            self.bad_epochs += 1
        return progress.epoch >= s["min_epochs"] and self.bad_epochs >= s["patience"]

    def score(self, model, val):
        return sum(val.accuracy[f"scale{s + 1}"] for s in range(model.n_scales)) / model.n_scales

    def selectable(self) -> bool:
        """Only rounds from ``train.alternate.select_from_round`` on compete for best_alternate.pt
        (joint, outside the rounds, always does)."""
        return self.round is None or self.round + 1 >= self.cfg["train"]["alternate"]["select_from_round"]

    def ema_decay(self) -> float:
        """``train.alternate.ema``: the alternation (and joint) validate and keep the weights' average."""
        return self.cfg["train"]["alternate"].get("ema", 0.0)

    def state_dict(self):
        return {"best_loss": self.best_loss, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state):
        self.best_loss, self.bad_epochs = state["best_loss"], state["bad_epochs"]


class AlternateCls(Alternating):
    name, section, trains, monitor = "alternate_cls", ("alternate", "cls"), "scales", "ce"

    def train_modules(self, model):
        """The scales but ``train.alternate.cls.frozen_scales`` (1-based), which stay as they are from
        round ``frozen_from_round`` on."""
        frozen = self.settings["frozen_scales"] if self.round + 1 >= self.settings["frozen_from_round"] else []
        return [net for s, net in enumerate(model.scales, start=1) if s not in frozen]

    def loss(self, model, images, target, part_boxes):
        # APNs frozen: their squares are fixed inputs, no gradient flows back through them
        out = model(images, part_boxes=part_boxes, detach_boxes=True, box_jitter=self.settings["box_jitter"])
        ces = scale_ce_losses(out.logits, target, self.smoothing)
        return sum(ces), {f"train/ce_scale{s + 1}": ce for s, ce in enumerate(ces)}


class AlternateAPN(Alternating):
    name, section, trains, monitor = "alternate_apn", ("alternate", "apn"), "proposers", "rank"

    def loss(self, model, images, target, part_boxes):
        logits = model(images, part_boxes=part_boxes).logits
        loss = rank_loss(logits, target, margin=self.cfg["train"]["alternate"]["margin"])
        return loss, {"train/rank": loss, **_active_terms(logits, target, self.cfg)}


class LocaliseAPN(AlternateAPN):
    """alternate_apn with a label-driven localiser in place of the rank loss (``localisers.py``):
    it scores other squares by the next scale's confidence in the true class, so it says where a
    better square is. Its plateau is that of the validation CE, which the squares move through the
    finer scales (the rank loss's hinge is not what it minimises)."""

    monitor = "ce"

    def __init__(self, cfg: dict, round: int | None = None):
        super().__init__(cfg, round)
        self.localiser = build_localiser(cfg["train"]["alternate"])

    def loss(self, model, images, target, part_boxes):
        loss, terms, logits = self.localiser.loss(model, images, target, part_boxes)
        return loss, {**terms, **_active_terms(logits, target, self.cfg)}


class Joint(Alternating):
    """Everything but the fusion heads trained at once on CE + rank_weight x rank; its epochs are
    kept in best_alternate.pt like the alternation's, so fusion starts from the best of them."""

    name, section = "joint", ("joint",)

    def train_modules(self, model):
        return [model.scales, model.proposers]

    def done(self, progress, val):
        return progress.epoch >= self.max_epochs()

    def loss(self, model, images, target, part_boxes):
        logits = model(images, part_boxes=part_boxes).logits
        ces = scale_ce_losses(logits, target, self.smoothing)
        rank = rank_loss(logits, target, margin=self.cfg["train"]["alternate"]["margin"])
        terms = {f"train/ce_scale{s + 1}": ce for s, ce in enumerate(ces)}
        terms.update({"train/rank": rank, **_active_terms(logits, target, self.cfg)})
        return sum(ces) + self.settings["rank_weight"] * rank, terms


class Fusion(Phase):
    """The fusion heads on frozen scales, from best_alternate.pt; best.pt then holds the fused model
    with the best validation accuracy of the last head (over all scales). ``model.fusion``:
    ``features`` trains the heads for ``train.fusion.epochs`` on the training split;
    ``log_probs`` has one epoch without training steps: it fits each head's per-scale weights on the
    validation outputs (``models/fusion.py``), deterministic, the same on every process."""

    name, section, trains, best_file = "fusion", ("fusion",), "fusion", "best.pt"

    def max_epochs(self) -> int:
        return 1 if self.cfg["model"]["fusion"] == "log_probs" else super().max_epochs()

    def loss(self, model, images, target, part_boxes):
        with torch.no_grad():
            out = model(images, part_boxes=part_boxes)
        ces = {f"train/ce_fused{name}": F.cross_entropy(head(out.features, out.logits).float(), target,
                                                        label_smoothing=self.smoothing)
               for name, head in model.fusion.items()}
        return sum(ces.values()), ces

    def score(self, model, val):
        return val.accuracy[f"fused{list(model.fusion)[-1]}"]

    def on_start(self, trainer):
        # its own file, so a fused best.pt written before a crash is never taken for it on resume
        path = os.path.join(trainer.work_dir, Alternating.best_file)
        barrier()  # under torchrun rank 0 may still be writing it: every process must read the final file
        if os.path.exists(path):
            best = load_checkpoint(path)
            trainer.model.load_state_dict(best["model"])
            score = trainer.progress.best.get(Alternating.best_file)
            log.info("fusion starts from %s (%s, %s)", Alternating.best_file, best["phase"],
                     "the alternation's last epoch" if score is None else f"val mean scale accuracy {score:.3f}")

    def run_epoch(self, trainer) -> float:
        if self.cfg["model"]["fusion"] != "log_probs":
            return super().run_epoch(trainer)
        self.fit_on_validation(trainer.model, trainer.validation.collect(trainer.model), self.settings["l2"])
        return math.nan  # no training step

    @staticmethod
    def fit_on_validation(model: RACNN, out, l2: float) -> None:
        """Fit the log_probs heads on the validation outputs ``out`` (gathered from every process)
        on the CPU, with the ridge penalty ``l2`` (``train.fusion.l2``), then give every process
        rank 0's weights. The validation accuracy logged and kept with best.pt is then measured on
        the images the weights were fitted on."""
        logits = [x.cpu() for x in out.logits]
        for name, head in model.fusion.items():
            fitted = LogProbFusion(head.n)
            nll = fit_log_prob_weights(fitted, logits, out.label.cpu(), l2=l2)
            with torch.no_grad():
                head.raw.copy_(fitted.raw)
            broadcast_from_rank0(head.raw.data)
            log.info("fusion %s: per-scale weights %s fitted on %d validation images (NLL %.4f)", name,
                     " ".join(f"{w:.3f}" for w in head.weights().tolist()), len(out.label), nll)


def _active_terms(logits, target, cfg) -> dict:
    """The APN phases' diagnostic: the fraction of active rank-loss hinges per scale pair."""
    active = hinge_active(logits, target, cfg["train"]["alternate"]["margin"])
    return {f"train/rank_active_{s + 1}_{s + 2}": a for s, a in enumerate(active)}


def build_plan(cfg: dict) -> list[Phase]:
    """The phases in order; a non-learned proposer (model.proposer != apn) has no APN phases."""
    learned = cfg["model"]["proposer"] == "apn"
    apn_phase = AlternateAPN if cfg["train"]["alternate"]["localiser"] == "rank" else LocaliseAPN
    tries = cfg["train"]["pretrain_cls"]["tries"]
    plan: list[Phase] = [PretrainCls(cfg)] if tries == 1 else [PretrainCls(cfg, k) for k in range(tries)]
    plan += [InitAPN(cfg)] if learned else []
    for r in range(cfg["train"]["alternate"]["rounds"]):
        plan += [AlternateCls(cfg, r)] + ([apn_phase(cfg, r)] if learned else [])
    if cfg["train"]["joint"]["epochs"] > 0:
        plan.append(Joint(cfg))
    return plan + [Fusion(cfg)]
