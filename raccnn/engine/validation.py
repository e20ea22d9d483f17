"""What RA-CNN's training measures on the validation split after every epoch, and how it is shown.

``Validation`` runs the model over the validation loader (``collect_outputs``) and returns a
``ValidationResult``: the top-1 accuracy of every head, the scales' summed cross-entropy, the rank
loss and the fraction of active rank hinges per pair of neighbouring scales (with
``train.alternate.margin``), and each proposer's square statistics (``box_stats`` against its tl
bounds) with the mean |change| of its squares on the same images since the previous validation
(``dtx``, ``dty``, ``dtl``; the previous squares are its state, saved in every checkpoint) and, on
a dataset with part annotations, its part hit (``part_hit``: as in evaluate.py, on the validation
images). The part hit is shown, never used: no phase's plateau or selection reads it.

The trainer (``trainer.py``) only passes the result on: to the phases (``done``, ``score``), to the
run's history (``row``), to the log (``lines``) and to TensorBoard (``write``, whose tags come from
``visualize.TAG_TEMPLATES``: ``val/<row key>`` and ``apn{a}/<statistic>`` for ``apn{a}_<statistic>``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor

from ..losses import hinge_active, rank_loss, scale_ce_losses
from ..models.proposers import part_index
from .evaluate import box_stats, head_accuracies, hit_centres, part_hit_rate
from .inference import collect_outputs
from .outputs import Outputs
from .visualize import TAG_TEMPLATES, expand_tag, fixed_images, log_box_histograms, log_phase_crops

MOVES = ("dtx", "dty", "dtl")


@dataclass
class ValidationResult:
    accuracy: dict[str, float | None]  # head ("scale1", ..., "fused123") -> top-1 accuracy
    ce: float  # sum over the scales of their mean cross-entropy
    rank: float  # the rank loss over all pairs of neighbouring scales
    active: list[float]  # per pair (1, 2), (2, 3), ...: fraction of active rank hinges
    boxes: list[dict] = field(default_factory=list)  # per proposer: box_stats, MOVES after the first, part_hit with parts
    outputs: Outputs | None = field(default=None, repr=False)

    def row(self) -> dict:
        """The flat record of the run's history: acc_<head>, ce, rank, rank_active_<s>_<s+1>, apn<a>_<stat>."""
        row = {f"acc_{head}": v for head, v in self.accuracy.items()}
        row.update(ce=self.ce, rank=self.rank)
        row.update({f"rank_active_{s}_{s + 1}": a for s, a in enumerate(self.active, start=1)})
        for a, stats in enumerate(self.boxes, start=1):
            row.update({f"apn{a}_{k}": v for k, v in stats.items()})
        return row

    def scalars(self) -> dict[str, float]:
        """{TensorBoard tag: value} for every ``val/`` and ``apn{a}/`` tag of ``TAG_TEMPLATES`` this
        result holds."""
        row, n = self.row(), len(self.active) + 1
        tags = {}
        for template in TAG_TEMPLATES["scalars"]:
            for tag in expand_tag(template, n):
                group, name = tag.split("/", 1)
                key = name if group == "val" else f"{group}_{name}" if group.startswith("apn") else None
                if key in row and row[key] is not None:
                    tags[tag] = row[key]
        return tags

    def lines(self, label: str, epoch: int, train_loss: float, rate: float, train_terms: dict) -> list[str]:
        """The log lines of an epoch: losses and accuracies, each proposer's squares, the active
        hinges on the validation split and (``train_terms``: the epoch's means) in training."""
        accs = " ".join(f"{head}={v:.3f}" for head, v in self.accuracy.items())
        lines = [f"{train_line(label, epoch, train_loss, rate)} | val ce {self.ce:.4f} rank {self.rank:.4f} | {accs}"]
        for a, b in enumerate(self.boxes, start=1):
            moved = (f", moved |dtx| {b['dtx']:.4f} |dty| {b['dty']:.4f} |dtl| {b['dtl']:.4f}") if "dtx" in b else ""
            hit = f", part hit {100 * b['part_hit']:.1f}%" if b.get("part_hit") is not None else ""
            lines.append(f"  apn{a} boxes: tl {b['tl_mean']:.3f}±{b['tl_std']:.3f}, centre ({b['tx_mean']:.3f}±"
                         f"{b['tx_std']:.3f}, {b['ty_mean']:.3f}±{b['ty_std']:.3f}), at tl_min "
                         f"{100 * b['frac_at_min']:.0f}%, at tl_max {100 * b['frac_at_max']:.0f}%{moved}{hit}")
        val = " ".join(f"{s}_{s + 1}={a:.2f}" for s, a in enumerate(self.active, start=1))
        prefix = "train/rank_active_"
        train = " ".join(f"{k[len(prefix):]}={v:.2f}" for k, v in train_terms.items() if k.startswith(prefix))
        grad = train_terms.get("train/grad_norm")
        lines.append(f"  active rank hinges: val {val} | train {train or '-'}; train grad norm "
                     f"{'-' if grad is None else f'{grad:.4g}'}")
        return lines


def train_line(label: str, epoch: int, train_loss: float, rate: float) -> str:
    """An epoch that took no training step (the log_probs fusion, fitted on validation) says so
    instead of logging its loss as nan."""
    if rate == 0 and math.isnan(train_loss):
        return f"{label} epoch {epoch}: no training step"
    return f"{label} epoch {epoch}: train loss {train_loss:.4f} ({rate:.0f} img/s)"


class Validation:
    """The validation of a training run (module docstring); ``__call__`` measures the model, or
    returns None where there is no validation split (``data.val_fraction: 0``)."""

    def __init__(self, cfg: dict, loader, device, amp=None):
        self.loader, self.device, self.amp = loader, device, amp
        self.margin = cfg["train"]["alternate"]["margin"]
        a = cfg["model"]["apn"]
        self.tl_bounds = (a["tl_min"], a["tl_max"])
        self.previous: list[Tensor] = []  # the last validation's squares per proposer, to measure moves
        # the same images at every phase end
        self.panel_batch = fixed_images(loader.dataset, n=8) if len(loader.dataset) else None
        self.panel_part = part_index(loader.dataset.part_names, cfg["data"]["hit_parts"])
        self.part_names, self.hit_parts = list(loader.dataset.part_names), cfg["data"]["hit_parts"]

    def collect(self, model) -> Outputs:
        """The model's outputs on the validation split (every process's share gathered)."""
        return collect_outputs(model, self.loader, self.device, "val", self.amp)

    def __call__(self, model) -> ValidationResult | None:
        if not len(self.loader.dataset):
            return None
        out = self.collect(model)
        ces = scale_ce_losses(out.logits, out.label)
        boxes = []
        _, has, centres = hit_centres(out, self.part_names, self.hit_parts)
        for s, squares in enumerate(out.rel_boxes):
            stats = box_stats(squares, *self.tl_bounds)
            if has.any():  # the part hit of the square scale s + 2 zooms into (evaluate.py)
                stats["part_hit"] = part_hit_rate(out.abs_boxes[s], has, centres)
            if s < len(self.previous):
                stats.update(zip(MOVES, (squares - self.previous[s]).abs().mean(0).tolist()))
            boxes.append(stats)
        self.previous = list(out.rel_boxes)
        return ValidationResult(
            accuracy=head_accuracies(out),
            ce=sum(ces).item(),
            rank=rank_loss(out.logits, out.label, margin=self.margin).item(),
            active=hinge_active(out.logits, out.label, self.margin).tolist(),
            boxes=boxes,
            outputs=out,
        )

    def report(self, log, writer, result: ValidationResult | None, step: int, *epoch) -> None:
        """Log the epoch's lines (``epoch``: label, epoch, train loss, images/s, the training terms'
        means), write the result's TensorBoard scalars and the histograms of the proposers' squares."""
        if result is None:
            log.info(train_line(*epoch[:4]) + " | no validation split")
            return
        for line in result.lines(*epoch):
            log.info(line)
        for tag, value in result.scalars().items():
            writer.add_scalar(tag, value, step)
        log_box_histograms(writer, result.outputs.rel_boxes, step)

    def phase_end(self, writer, model, label: str, step: int) -> None:
        """The crop panel of the same validation images at the end of every phase."""
        if self.panel_batch is not None:
            log_phase_crops(writer, model, self.panel_batch, label, step, self.panel_part)

    def state_dict(self) -> dict:
        return {"previous_boxes": {f"scale{s}": b for s, b in enumerate(self.previous, start=2)}}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("previous_boxes") or {}
        self.previous = [saved[k] for k in sorted(saved, key=lambda k: int(k[len("scale"):]))]
